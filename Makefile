# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the package so pip does not resolve `torch>=2.4` to a multi-GB CUDA build.
# Override with TORCH_SPEC='torch' (or a CUDA index) on GPU machines.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "stream-vae needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Detection on a fleet with injected faults, then the model lifecycle (drift -> retrain -> swap).
demo: $(VENV)/.installed
	$(VENV)/bin/stream-vae demo
	$(VENV)/bin/stream-vae demo --drift

# Lint and types are part of the test command, so CI keeps them clean too.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check stream_vae tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check stream_vae tests bench
	$(VENV)/bin/ruff format --check stream_vae tests bench
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/core.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
