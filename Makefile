# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch goes in before the package, from PyTorch's CPU wheel index, so pip does not resolve
# `torch>=2.4` to a multi-GB CUDA build (deploy/install-torch.sh; it falls back to pip's own
# index where that one is unreachable). For a GPU machine, a CUDA index:
#   make TORCH_INDEX=https://download.pytorch.org/whl/cu126 demo
# (TORCH_INDEX= : the default index's build); another version: TORCH_SPEC='torch>=2.4'.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "stream-vae needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	TORCH_SPEC='$(TORCH_SPEC)' TORCH_INDEX='$(TORCH_INDEX)' sh deploy/install-torch.sh $(PY)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Detection on a fleet with injected faults, then the model lifecycle (drift -> retrain -> swap).
demo: $(VENV)/.installed
	$(VENV)/bin/stream-vae demo
	$(VENV)/bin/stream-vae demo --drift

# Lint and types are part of the test command, so CI keeps them clean too; so is the wheel,
# installed into a fresh venv and run as a user would (tests/wheel_smoke.sh, ~1 min).
# pytest runs on two workers of one thread each (tests/conftest.py): many tests wait on a
# broker, so two workers finish in ~2/3 of the time on 2 cores. worksteal: a worker that runs
# out takes tests queued for the other (with the default, one worker sat idle for the last
# ~60 s of a ~600 s suite while the other worked through its queue).
test: $(VENV)/.installed
	$(VENV)/bin/ruff check stream_vae tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -n 2 --dist worksteal
	STREAM_VAE_LOG__LEVEL=ERROR sh tests/wheel_smoke.sh $(PY) build/wheel-smoke

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check stream_vae tests bench
	$(VENV)/bin/ruff format --check stream_vae tests bench
	$(VENV)/bin/mypy

bench: $(VENV)/.installed
	$(PY) bench/core.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
