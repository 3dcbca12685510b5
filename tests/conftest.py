"""Shared test setup: the segflow package on sys.path, and the repository root for integration tests."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The real DAG run once on the tiny config; tests that change files work on a copy (see workflow.clone_run)."""
    from workflow import copy_workflow, snakemake

    workdir = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    snakemake(workdir)
    return workdir
