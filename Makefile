# Two commands for a fresh clone: `make run` (the default pipeline) and `make test` (the test suite).
# Both install into an idempotent .venv in the repository first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: install run test lint test-slurm dry-run report clean

install: $(STAMP)

# Reinstall only when the requirements change; torch is pinned there (an unpinned torch pulls a CUDA build).
# requirements-dev.txt: the linters of `make lint`.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "report: results/report/report.html"

dry-run: install
	$(BIN)/snakemake -n --cores $(CORES)

test: install
	$(BIN)/python -m pytest tests

# The workflow's own lint (clean: it prints nothing to fix), Snakemake and Python formatting, the Python linter
# (ruff.toml), and the package's import graph (no cycle).
lint: install
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check .
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tests/module_graph.py

# A real single-node SLURM cluster on localhost (needs root: installs slurm-wlm and munge); see docs/slurm.md.
test-slurm: install
	bash tests/slurm/run_slurm_test.sh

clean:
	rm -rf results .snakemake
