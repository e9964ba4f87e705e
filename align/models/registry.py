"""The model families align implements natively, registered with transformers' Auto classes: ``AutoModel`` on
a ``model_type: llada`` or ``Dream`` config gives align's class (no remote code)."""

from transformers import AutoConfig, AutoModel

from align.models.dream import DreamConfig, DreamModel
from align.models.llada import LLaDAConfig, LLaDAModelLM

NATIVE = {"llada": (LLaDAConfig, LLaDAModelLM), "Dream": (DreamConfig, DreamModel)}
for _config_cls, _model_cls in NATIVE.values():
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModel.register(_config_cls, _model_cls, exist_ok=True)
