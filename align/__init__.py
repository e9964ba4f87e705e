"""align: preference alignment (DPO) for masked-diffusion language models.

Modules: ``masking`` (random mask draws), ``estimators`` (likelihood and DPO
margin estimators), ``losses`` (preference losses on margin estimates),
``models`` (LLaDA / Dream as native transformers models), ``data``,
``config`` and ``trainer`` (the DPO training loop behind ``train_dpo.py``).
"""

__version__ = "0.1.0"
