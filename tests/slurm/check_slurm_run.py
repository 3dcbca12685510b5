"""Check a pipeline run went through SLURM job by job, and that it scored exactly as a local run did.

Usage: check_slurm_run.py SLURM_RUN_DIR LOCAL_RUN_DIR
"""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

RULES = {
    "download_case", "inspect_case", "select_cases", "preprocess_case", "train_round",
    "select_model", "predict_case", "score_case", "aggregate_scores", "render_report",
}


def main(slurm_dir: Path, local_dir: Path) -> None:
    log = (slurm_dir / "run.log").read_text()
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    slurm_ids = {int(slurm_id) for _, slurm_id in submitted}
    jobs_planned = sum(int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", log, flags=re.M) if rule in RULES)
    assert len(slurm_ids) >= jobs_planned > 0, f"{len(slurm_ids)} SLURM jobs for {jobs_planned} planned jobs"

    # Each submitted job is known to the scheduler (squeue keeps finished jobs for MinJobAge) and completed.
    listed = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], capture_output=True, text=True, check=True)
    states = dict(line.split() for line in listed.stdout.splitlines())
    missing = [i for i in slurm_ids if str(i) not in states]
    assert not missing, f"jobs unknown to slurmctld: {missing}"
    assert all(states[str(i)] == "COMPLETED" for i in slurm_ids), {i: states[str(i)] for i in slurm_ids}

    # One SLURM log folder per rule, written by the executor plugin.
    logged_rules = {p.name.removeprefix("rule_") for p in (slurm_dir / ".snakemake/slurm_logs").iterdir()}
    assert RULES <= logged_rules, f"rules without SLURM logs: {RULES - logged_rules}"

    slurm_scores = pd.read_csv(slurm_dir / "results/scores/scores.tsv", sep="\t")
    local_scores = pd.read_csv(local_dir / "results/scores/scores.tsv", sep="\t")
    pd.testing.assert_frame_equal(slurm_scores, local_scores, check_exact=False, rtol=0, atol=1e-6)
    print(f"{len(slurm_ids)} jobs ran through SLURM (ids {min(slurm_ids)}-{max(slurm_ids)}); scores equal the local run's")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
