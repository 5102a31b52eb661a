# The two commands that matter: `make demo` and `make test`.
# Both create .venv on first use with everything they need (CPU PyTorch included).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-pythons bench bench-quick clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[torch,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# Most tests wait on subprocesses, fsyncs and torch start-up: two workers per core pair finish
# the suite in about two thirds of the time of one (331 s against 496 s on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --dist worksteal

# The torch-free tests on Python 3.10, 3.12 and 3.13 (those on this machine), each in .venv-3.X,
# installed by .venv's pip.
test-pythons: $(STAMP)
	.ci/other-pythons

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[torch,dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) .venv-3.* .pytest_cache build src/*.egg-info
