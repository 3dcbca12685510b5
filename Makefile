# Two commands for a fresh clone: `make run` (the default pipeline) and `make test` (the test suite).
# Both install into an idempotent .venv in the repository first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed

.PHONY: install run test test-slurm dry-run report clean

install: $(STAMP)

# Reinstall only when requirements.txt changes; torch is pinned there (an unpinned torch pulls a CUDA build).
$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: install
	$(BIN)/snakemake --cores $(CORES)
	@echo "report: results/report/report.html"

dry-run: install
	$(BIN)/snakemake -n --cores $(CORES)

test: install
	$(BIN)/python -m pytest tests

# A real single-node SLURM cluster on localhost (needs root: installs slurm-wlm and munge); see docs/slurm.md.
test-slurm: install
	bash tests/slurm/run_slurm_test.sh

clean:
	rm -rf results .snakemake
