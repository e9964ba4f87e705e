# The two quick-start commands. Each sets itself up on a fresh clone:
#   make demo   install, then DPO-train the bundled tiny chat model on bundled data (CPU, offline)
#   make test   install, lint (ruff check, ruff format --check), then run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install demo lint test test-quick bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: an unpinned resolve would pull the CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(OFFLINE) $(BIN)/python -m align.train_dpo recipe=demo

# ruff's rules and width are pyproject's [tool.ruff]; the suite runs only on a tree that passes them
lint: install
	$(BIN)/ruff check align tests data benchmarks launch
	$(BIN)/ruff format --check align tests data benchmarks launch

test: lint
	$(OFFLINE) $(BIN)/python -m pytest -q -n 2 --dist worksteal tests

# a developer's quick subset: without the tests marked slow or distributed (CI runs everything: make test)
test-quick: install
	$(OFFLINE) $(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow and not distributed" tests

bench: install
	$(OFFLINE) $(BIN)/python benchmarks/estimator_variance.py
