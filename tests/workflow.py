"""Running the real Snakemake DAG from tests: a copy of the workflow in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "rules", "workflow_scripts", "config", "envs", "report", "profiles"]


def copy_workflow(destination: Path) -> Path:
    """Copy what a clone holds (minus tests and results) so that the run cannot touch the repository."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, destination / part)
    shutil.copy2(REPO / "tests" / "data" / "tiny.yaml", destination / "config" / "tiny.yaml")
    return destination


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the snakemake of this interpreter's environment in ``workdir`` and return the finished process."""
    command = [str(Path(sys.executable).with_name("snakemake")), "--cores", "2", "--configfile", "config/tiny.yaml"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.run(command + list(args), cwd=workdir, capture_output=True, text=True, env=env)
    if check and process.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{process.stdout[-4000:]}\n{process.stderr[-6000:]}")
    return process
