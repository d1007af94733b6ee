# Two entry points (see README): `make quickstart` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision are pinned here: these wheels are on local disk on the reference machines,
# and an unpinned torch would pull a multi-GB CUDA build from the network.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/repair-dist quickstart

test: install
	$(VENV)/bin/ruff check repair_dist tests sweeps benchmarks
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff format repair_dist tests sweeps benchmarks
	$(VENV)/bin/ruff check --fix repair_dist tests sweeps benchmarks

bench: install
	$(PY) benchmarks/bench_stats.py
	$(PY) benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) results
