"""Running the real Snakemake DAG from tests: a copy of the workflow in a temporary directory."""

from __future__ import annotations

import os
import re
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


def clone_run(finished: Path, destination: Path) -> Path:
    """Copy a finished run, timestamps and Snakemake's metadata included, so a test can change it freely."""
    shutil.copytree(finished, destination, symlinks=True, copy_function=shutil.copy2)
    return destination


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run (empty when nothing is to be done)."""
    counts: dict[str, int] = {}
    lines = dry_run_output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def jobs_run(run_output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) for every job a real run executed, read from Snakemake's job headers."""
    jobs, rule = [], None
    for line in run_output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "checkpoint ", "localrule ", "localcheckpoint ")) and stripped.endswith(":"):
            rule = stripped.split()[1].rstrip(":")
            jobs.append((rule, ""))
        elif stripped.startswith("wildcards:") and jobs:
            jobs[-1] = (jobs[-1][0], stripped.removeprefix("wildcards:").strip())
    return jobs


def rule_resources(repo: Path = REPO) -> dict[str, dict[str, int]]:
    """Each rule's own memory (first attempt, MB) and runtime (minutes), read from rules/*.smk: the one place they
    are set (profiles add site settings only)."""
    found = {}
    for smk in sorted((repo / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=(?:rule|checkpoint) )", smk.read_text()):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            memory = re.search(r"mem_mb=lambda wildcards, attempt: (\d+) \* attempt", block)
            runtime = re.search(r"runtime=(\d+)", block)
            if name and memory and runtime:
                found[name.group(1)] = {"mem_mb": int(memory.group(1)), "runtime": int(runtime.group(1))}
    return found
