"""Check a pipeline run went through SLURM job by job, and that it scored exactly as a local run did.

Usage: check_slurm_run.py SLURM_RUN_DIR LOCAL_RUN_DIR

Evidence, from both sides: Snakemake's log names one SLURM job id per job it ran (and nothing ran locally but the
target rule `all`); slurmctld itself (squeue keeps finished jobs for MinJobAge) knows every id, reports it
COMPLETED, and recorded the rule in the job's comment, this run's folder as its working directory, the memory the
test profile asks for that rule and one CPU per thread of the job; every job's SLURM log shows the job step ran Snakemake's
slurm-jobstep executor. The production profile (profiles/slurm) is checked from its dry runs (SLURM_RUN_DIR/
dry_run.log, dry_run_after.log): every rule gets the memory, runtime and GPUs the profile gives it on a first
attempt.
"""

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

RULES = {
    "download_case", "inspect_case", "select_cases", "preprocess_case", "train_round",
    "select_model", "predict_case", "score_case", "aggregate_scores", "render_report",
}
GPU_RULES = {"train_round", "select_model", "predict_case"}
SUBMITTED = re.compile(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.$", re.M)
JOB_BLOCK = re.compile(r"^    jobid: (\d+)\n(.*?)^Shell command", re.M | re.S)
JOB_HEADER = re.compile(r"^(rule|checkpoint|localrule|localcheckpoint) (\w+):$", re.M)


def main(slurm_dir: Path, local_dir: Path) -> None:
    slurm_dir, local_dir = slurm_dir.resolve(), local_dir.resolve()
    log = (slurm_dir / "run.log").read_text()

    # Snakemake's side: every job it ran, except the target rule, was one sbatch submission.
    headers = JOB_HEADER.findall(log)
    local_jobs = [rule for kind, rule in headers if kind.startswith("local")]
    remote_jobs = Counter(rule for kind, rule in headers if not kind.startswith("local"))
    assert local_jobs == ["all"], f"jobs that ran outside SLURM: {local_jobs}"
    submissions = SUBMITTED.findall(log)  # (Snakemake job, SLURM job id, SLURM log)
    submitted = {int(job_id): Path(log_path) for _, job_id, log_path in submissions}
    # Snakemake's threads for each job (its header says "threads: N" when N > 1), by SLURM job id.
    threads_of_job = {int(job): int(m.group(1)) if (m := re.search(r"^    threads: (\d+)$", block, re.M)) else 1
                      for job, block in JOB_BLOCK.findall(log)}
    threads = {int(job_id): threads_of_job[int(job)] for job, job_id, _ in submissions}
    rule_of = {job_id: path.relative_to(slurm_dir / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
               for job_id, path in submitted.items()}
    assert Counter(rule_of.values()) == remote_jobs, f"jobs run {dict(remote_jobs)}, submitted {Counter(rule_of.values())}"
    assert set(remote_jobs) == RULES, f"rules missing from the run: {RULES - set(remote_jobs)}"

    # The scheduler's side: slurmctld ran each of those jobs, for that rule, in this run's folder.
    listed = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%m|%C|%P|%k|%Z"], capture_output=True, text=True, check=True
    ).stdout
    known = {int(fields[0]): fields[1:] for fields in (line.split("|", 6) for line in listed.splitlines())}
    test_profile = yaml.safe_load((slurm_dir / "slurm_test_profile/config.yaml").read_text())
    for job_id, rule in rule_of.items():
        assert job_id in known, f"SLURM job {job_id} ({rule}) unknown to slurmctld"
        state, memory, cpus, partition, comment, workdir = known[job_id]
        assert state == "COMPLETED", f"SLURM job {job_id} ({rule}): {state}"
        assert comment.startswith(f"rule_{rule}"), f"SLURM job {job_id}: comment {comment!r}, expected rule {rule}"
        assert Path(workdir) == slurm_dir, f"SLURM job {job_id} ran in {workdir}"
        # The profile's resources reached sbatch (--mem, --cpus-per-task, -p).
        wanted_mb = test_profile["set-resources"].get(rule, {}).get("mem_mb", test_profile["default-resources"]["mem_mb"])
        assert memory == f"{wanted_mb}M", f"SLURM job {job_id} ({rule}): memory {memory}, profile asks {wanted_mb}M"
        assert int(cpus) == threads[job_id], f"SLURM job {job_id} ({rule}): {cpus} CPUs for {threads[job_id]} threads"
        if rule in test_profile["set-threads"]:
            assert threads[job_id] == test_profile["set-threads"][rule], f"{rule}: {threads[job_id]} threads"
        assert partition == test_profile["default-resources"]["slurm_partition"], f"SLURM job {job_id}: {partition}"
        job_log = submitted[job_id].read_text()
        assert "--executor slurm-jobstep" in job_log and "Finished jobid" in job_log, f"{submitted[job_id]}"

    check_production_profile(slurm_dir)

    slurm_scores = pd.read_csv(slurm_dir / "results/scores/scores.tsv", sep="\t")
    local_scores = pd.read_csv(local_dir / "results/scores/scores.tsv", sep="\t")
    pd.testing.assert_frame_equal(slurm_scores, local_scores, check_exact=False, rtol=0, atol=1e-6)
    identical = (slurm_dir / "results/scores/scores.tsv").read_bytes() == (local_dir / "results/scores/scores.tsv").read_bytes()
    print(
        f"{len(submitted)} jobs of {len(RULES)} rules ran through SLURM (job ids {min(submitted)}-{max(submitted)}, "
        f"all COMPLETED); scores.tsv ({len(slurm_scores)} cases) "
        + ("is byte-identical to the local run's" if identical else "equals the local run's within 1e-6")
    )


def check_production_profile(slurm_dir: Path) -> None:
    """Every rule of the dry run with profiles/slurm gets the profile's first-attempt resources and its GPUs."""
    profile = yaml.safe_load((slurm_dir / "profiles/slurm/config.yaml").read_text())
    # Two dry runs, as jobs after the checkpoint select_cases only show once it has run: before the SLURM run
    # (download to select_cases), and after it with --forcerun preprocess_case (preprocess_case to the report).
    dry_run = (slurm_dir / "dry_run.log").read_text() + (slurm_dir / "dry_run_after.log").read_text()
    seen = {}
    for rule, block in re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", dry_run, re.M | re.S):
        found = re.search(r"^\s+resources: (.*)$", block, re.M)
        seen[rule] = dict(item.split("=", 1) for item in found.group(1).split(", ")) if found else {}
    assert set(seen) >= RULES, f"rules missing from the dry run with profiles/slurm: {RULES - set(seen)}"
    for rule in RULES:
        wanted = profile["set-resources"].get(rule, {})
        resources = seen[rule]
        if "mem_mb" in wanted:
            first_attempt = eval(str(wanted["mem_mb"]), {"attempt": 1})  # the profile's "16000 * attempt"
            assert resources["mem_mb"] == str(first_attempt), f"profiles/slurm: {rule} mem_mb {resources['mem_mb']}"
        if "runtime" in wanted:
            assert resources["runtime"] == str(wanted["runtime"]), f"profiles/slurm: {rule} runtime {resources}"
        assert (resources.get("gpu") == "1") == (rule in GPU_RULES), f"profiles/slurm: {rule} gpu {resources.get('gpu')}"


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
