# rayrec: `make demo` and `make test` work on a fresh clone (they set up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch is installed before anything else so no resolver ever pulls a
# CUDA build. Elsewhere, point this at a CPU wheel index (pip's --index-url) if needed.
TORCH_INSTALL ?= torch==2.13.0
STAMP := $(VENV)/.rayrec-installed
export DS_ACCELERATOR ?= cpu
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.5
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
PYTEST_FAST := -m "not slow and not gpu" -q -p no:randomly --timeout=900 -ra

.PHONY: wheel setup demo test test-slow test-all bench lint clean cluster-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --disable-pip-version-check $(TORCH_INSTALL)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	@$(PY) -c "import torch, ray, deepspeed; print('rayrec env: torch', torch.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__)" 2>/dev/null | tail -1
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m rayrec.jobs.demo

test: setup
	$(PY) -m pytest $(PYTEST_FAST) tests

test-slow: setup
	$(PY) -m pytest -m "slow" -q -ra --timeout=3600 tests

test-all: setup
	$(PY) -m pytest -q -ra --timeout=3600 tests

bench: setup
	$(PY) -m benchmarks.run

lint: setup
	$(PY) -m ruff check platform models ops_kernels jobs serve_apps tests benchmarks scripts
	$(PY) scripts/check_layers.py

clean:
	rm -rf outputs runs .pytest_cache

# The rayrec wheel (dist/rayrec-*.whl, for `pip install --no-deps` on cluster nodes) and its
# unpacked package (dist/pkg/rayrec, for `ray job submit --runtime-env-json
# '{"py_modules": ["dist/pkg/rayrec"]}'`). A .whl in py_modules is pip-installed by Ray WITH
# its dependencies (minutes, GBs, and a CUDA torch ahead of the cluster's pinned one).
wheel: setup
	rm -rf dist && $(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(PY) -c "import glob, zipfile; zipfile.ZipFile(glob.glob('dist/rayrec-*.whl')[0]).extractall('dist/pkg')"

# A local Ray head, jobs through `ray job submit` with the packaged code, serve deploy, a
# query, and the head stopped at the end.
cluster-demo: wheel
	bash scripts/cluster_demo.sh
