# `make demo` and `make test` each set up .venv on first use (CPU stack).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.torchrec-ple-installed
# OMP_WAIT_POLICY is chosen by torchrec_ple at import (processes x threads vs cores); set it to override.

.PHONY: demo test lint install clean bench bench-quick bench-peers

$(STAMP): requirements/cpu.txt requirements/torchrec.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q --no-deps -r requirements/torchrec.txt
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q -e .
	touch $(STAMP)

# FEAST=1 also installs the optional Feast extra (CI sets it, so the Feast tests run there).
FEAST ?=
FEAST_STAMP := $(VENV)/.torchrec-ple-feast-installed
# TUNE=1 also installs the optional Optuna extra of `torchrec-ple tune` (CI sets it too).
TUNE ?=
TUNE_STAMP := $(VENV)/.torchrec-ple-tune-installed
TEST_DEPS := $(STAMP) $(if $(FEAST),$(FEAST_STAMP)) $(if $(TUNE),$(TUNE_STAMP))

$(FEAST_STAMP): $(STAMP) requirements/feast.txt
	$(PY) -m pip install -q -r requirements/feast.txt
	touch $(FEAST_STAMP)

$(TUNE_STAMP): $(STAMP) requirements/tune.txt
	$(PY) -m pip install -q -r requirements/tune.txt
	touch $(TUNE_STAMP)

install: $(STAMP)

# The demo run folder is its own: running it again replaces it (fit logs what it replaced).
demo: $(STAMP)
	$(PY) -m torchrec_ple fit feature_specs/synthetic.yaml --out runs/demo --overwrite

test: $(TEST_DEPS)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check torchrec_ple tests benchmarks
	$(VENV)/bin/ruff format --check torchrec_ple tests benchmarks

clean:
	rm -rf runs .pytest_cache

# Benchmarks (not part of CI): each prints a table and writes benchmarks/results/*.json.
bench: $(STAMP)
	$(PY) -m benchmarks.head
	$(PY) -m benchmarks.embedding
	$(PY) -m benchmarks.data_path
	$(PY) -m benchmarks.fit
	$(PY) -m benchmarks.scaling

bench-quick: $(STAMP)
	for b in head embedding data_path fit scaling; do $(PY) -m benchmarks.$$b --quick || exit 1; done

# Scale curves (issue #16): tables 1M/10M/50M rows over 2 processes, batch 256..16k (~5 min).
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -m benchmarks.scale

bench-peers: $(STAMP)
	bash benchmarks/peers_setup.sh
	$(PY) -m benchmarks.peers
