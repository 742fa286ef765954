# Each of these does all the set-up it needs on a fresh machine:
#   make run    create .venv if missing, install the package, run the whole workflow
#   make test   the same with the test extras, then the whole test suite (what CI runs, after lint)
#   make unit   the fast unit suite (no snakemake runs, no cluster): for every change
#   make lint   snakemake --lint, snakefmt, ruff check and ruff format --check
#   make report the HTML report of a finished run: results/report.html
#   make bench  the speed benchmark of BENCHMARKS.md (installs the bench extra: diffusers)
#   make samplers  the sampler table, results/samplers/ (installs the diffusers extra)
# Inside an activated environment the plain snakemake commands of the README work as well.

PYTHON ?= python3
VENV ?= .venv
CORES ?= all
BIN := $(VENV)/bin

.PHONY: run report samplers test unit lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, redone whenever pyproject.toml changes.
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,slurm,diffusers]"
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@ $(VENV)/.installed-run

$(VENV)/.installed-diffusers: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[diffusers]"
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/snakemake --cores $(CORES) --resources gpu=1

samplers: $(VENV)/.installed-diffusers
	$(BIN)/snakemake samplers --cores $(CORES) --resources gpu=1

report: $(VENV)/.installed-run
	$(BIN)/snakemake --report results/report.html

# Spread over every core; tests that share an expensive fixture share a worker (tests/conftest.py).
PYTEST := $(BIN)/python -m pytest -n auto --dist loadgroup

test: $(VENV)/.installed-test
	$(PYTEST)

unit: $(VENV)/.installed-test
	$(PYTEST) -m "not workflow and not slurm"

lint: $(VENV)/.installed-test
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf results logs .snakemake
