"""Check a pipeline run went through SLURM with its localrules and groups, and scored exactly as a local run did.

Usage: check_slurm_run.py SLURM_RUN_DIR LOCAL_RUN_DIR

Evidence, from both sides: Snakemake's log shows the localrules (download_case, select_cases, aggregate_scores,
render_report, and the target rule `all`) as local jobs and names one SLURM job id per other job or group job;
each group job's SLURM log shows it ran only its group's rules, for at most group-components cases, and every
grouped job ran in exactly one group job. slurmctld itself (squeue keeps finished jobs for MinJobAge) knows every
id, reports it COMPLETED, and recorded the rule or group in the job's comment, this run's folder as its working
directory, the memory the test profile asks for that rule (for a group job: its largest member's, as it runs one
case at a time) and one CPU per thread of the job; every job's SLURM log shows the job step ran Snakemake's
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
    "download_case",
    "inspect_case",
    "select_cases",
    "preprocess_case",
    "train_round",
    "select_model",
    "predict_case",
    "score_case",
    "aggregate_scores",
    "render_report",
}
GPU_RULES = {"train_round", "select_model", "predict_case"}
LOCAL_RULES = {"download_case", "select_cases", "aggregate_scores", "render_report"}
SUBMITTED = re.compile(r"^Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.$", re.M)
JOB_BLOCK = re.compile(r"^    jobid: (\d+)\n(.*?)^Shell command", re.M | re.S)
JOB_HEADER = re.compile(r"^(rule|checkpoint|localrule|localcheckpoint) (\w+):$", re.M)


def group_members(slurm_log: Path) -> list[tuple[str, str]]:
    """(rule, case) of every job a group job ran to the end, from its SLURM log: the job step's Snakemake runs
    each job through srun in a Snakemake of its own, which prints it as a local job and then "Finished jobid"."""
    members, running = [], None
    for line in slurm_log.read_text().splitlines():
        if found := re.match(r"^localrule (\w+):$", line):
            running = [found.group(1), None]
        elif running and (found := re.match(r"^\s+wildcards: case=(\S+)$", line)):
            running[1] = found.group(1)
        elif running and re.match(rf"^Finished jobid: \d+ \(Rule: {running[0]}\)$", line):
            members.append(tuple(running))
            running = None
    return members


def main(slurm_dir: Path, local_dir: Path) -> None:
    slurm_dir, local_dir = slurm_dir.resolve(), local_dir.resolve()
    log = (slurm_dir / "run.log").read_text()
    test_profile = yaml.safe_load((slurm_dir / "slurm_test_profile/config.yaml").read_text())
    group_of_rule = test_profile["groups"]
    group_size = {name: int(n) for name, n in (entry.split("=") for entry in test_profile["group-components"])}

    # Snakemake's side: the localrules ran here, every other job in one sbatch submission: a job of its own, or
    # a member of a group job (printed indented under "Group job ...").
    headers = JOB_HEADER.findall(log)
    local_jobs = Counter(rule for kind, rule in headers if kind.startswith("local"))
    single_jobs = Counter(rule for kind, rule in headers if not kind.startswith("local"))
    grouped_jobs = Counter(re.findall(r"^    (?:rule|checkpoint) (\w+):$", log, re.M))
    assert set(local_jobs) == LOCAL_RULES | {"all"}, f"jobs that ran outside SLURM: {dict(local_jobs)}"
    assert not set(single_jobs) & set(group_of_rule), f"grouped rules submitted on their own: {dict(single_jobs)}"
    assert set(grouped_jobs) == set(group_of_rule), f"jobs in groups: {dict(grouped_jobs)}"
    assert set(local_jobs) | set(single_jobs) | set(grouped_jobs) == RULES | {"all"}, "rules missing from the run"
    submissions = SUBMITTED.findall(log)  # (Snakemake job, SLURM job id, SLURM log)
    submitted = {int(job_id): Path(log_path) for _, job_id, log_path in submissions}
    # Snakemake's threads for each single job (its header says "threads: N" when N > 1), by SLURM job id.
    threads_of_job = {
        job: int(m.group(1)) if (m := re.search(r"^    threads: (\d+)$", block, re.M)) else 1
        for job, block in JOB_BLOCK.findall(log)
    }
    # The SLURM log folder names the rule (rule_<rule>/...) or the group (group_<group>_<rules>/...).
    unit_of = {
        job_id: path.relative_to(slurm_dir / ".snakemake/slurm_logs").parts[0] for job_id, path in submitted.items()
    }
    singles = {job_id: unit.removeprefix("rule_") for job_id, unit in unit_of.items() if unit.startswith("rule_")}
    assert Counter(singles.values()) == single_jobs, (
        f"jobs run {dict(single_jobs)}, submitted {Counter(singles.values())}"
    )
    groups = {
        job_id: next(g for g in group_size if unit.startswith(f"group_{g}_"))
        for job_id, unit in unit_of.items()
        if unit.startswith("group_")
    }
    assert len(singles) + len(groups) == len(submitted)

    # Each group job ran only its group's rules, at most group-components cases, and every grouped job ran in
    # exactly one group job.
    ran_in_groups = Counter()
    for job_id, group in groups.items():
        members = group_members(submitted[job_id])
        assert members and {group_of_rule[rule] for rule, _ in members} == {group}, f"SLURM job {job_id}: {members}"
        assert len({case for _, case in members}) <= group_size[group], f"SLURM job {job_id}: {members}"
        ran_in_groups.update(members)
    assert max(ran_in_groups.values()) == 1, f"grouped jobs run twice: {ran_in_groups}"
    assert Counter(rule for rule, _ in ran_in_groups) == grouped_jobs, f"{ran_in_groups} != {grouped_jobs}"

    # The scheduler's side: slurmctld ran each of those jobs, for that rule or group, in this run's folder.
    listed = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%m|%C|%P|%k|%Z"], capture_output=True, text=True, check=True
    ).stdout
    known = {int(fields[0]): fields[1:] for fields in (line.split("|", 6) for line in listed.splitlines())}

    def memory_of(rule):
        return test_profile["set-resources"].get(rule, {}).get("mem_mb", test_profile["default-resources"]["mem_mb"])

    for job_id, unit in unit_of.items():
        assert job_id in known, f"SLURM job {job_id} ({unit}) unknown to slurmctld"
        state, memory, cpus, partition, comment, workdir = known[job_id]
        assert state == "COMPLETED", f"SLURM job {job_id} ({unit}): {state}"
        name = unit.removeprefix("rule_").removeprefix("group_")
        assert comment.startswith(f"rule_{name}"), f"SLURM job {job_id}: comment {comment!r}, expected {name}"
        assert Path(workdir) == slurm_dir, f"SLURM job {job_id} ran in {workdir}"
        # The profile's resources reached sbatch (--mem, --cpus-per-task, -p). A group job runs one case at a
        # time (group_slot), so it asks for its largest member's memory and one CPU (no grouped rule has more).
        if job_id in singles:
            rule = singles[job_id]
            wanted_mb, wanted_cpus = (
                memory_of(rule),
                threads_of_job[next(j for j, i, _ in submissions if int(i) == job_id)],
            )
            if rule in test_profile["set-threads"]:
                assert wanted_cpus == test_profile["set-threads"][rule], f"{rule}: {wanted_cpus} threads"
        else:
            wanted_mb, wanted_cpus = max(memory_of(rule) for rule, _ in group_members(submitted[job_id])), 1
        assert memory == f"{wanted_mb}M", f"SLURM job {job_id} ({unit}): memory {memory}, profile asks {wanted_mb}M"
        assert int(cpus) == wanted_cpus, f"SLURM job {job_id} ({unit}): {cpus} CPUs for {wanted_cpus} threads"
        assert partition == test_profile["default-resources"]["slurm_partition"], f"SLURM job {job_id}: {partition}"
        job_log = submitted[job_id].read_text()
        assert "--executor slurm-jobstep" in job_log and "Finished jobid" in job_log, f"{submitted[job_id]}"

    check_production_profile(slurm_dir)

    slurm_scores = pd.read_csv(slurm_dir / "results/scores/scores.tsv", sep="\t")
    local_scores = pd.read_csv(local_dir / "results/scores/scores.tsv", sep="\t")
    pd.testing.assert_frame_equal(slurm_scores, local_scores, check_exact=False, rtol=0, atol=1e-6)
    identical = (slurm_dir / "results/scores/scores.tsv").read_bytes() == (
        local_dir / "results/scores/scores.tsv"
    ).read_bytes()
    print(
        f"{sum(local_jobs.values()) - 1} jobs of {len(LOCAL_RULES)} localrules ran on the submit host; "
        f"{len(submitted)} SLURM jobs (ids {min(submitted)}-{max(submitted)}, all COMPLETED): {len(groups)} group jobs "
        f"with {sum(grouped_jobs.values())} jobs, {len(singles)} single jobs; scores.tsv ({len(slurm_scores)} cases) "
        + ("is byte-identical to the local run's" if identical else "equals the local run's within 1e-6")
    )


def check_production_profile(slurm_dir: Path) -> None:
    """Every rule of the dry run with profiles/slurm gets the profile's first-attempt resources and its GPUs."""
    profile = yaml.safe_load((slurm_dir / "profiles/slurm/config.yaml").read_text())
    # Two dry runs, as jobs after the checkpoint select_cases only show once it has run: before the SLURM run
    # (download to select_cases), and after it with --forcerun preprocess_case (preprocess_case to the report).
    dry_run = (slurm_dir / "dry_run.log").read_text() + (slurm_dir / "dry_run_after.log").read_text()
    seen = {}
    # Jobs of a group job are printed indented under "Group job ...".
    headers = list(re.finditer(r"^ *(?:rule|checkpoint) (\w+):$", dry_run, re.M))
    for header, after in zip(headers, [*headers[1:], None]):
        rule, block = header.group(1), dry_run[header.end() : after.start() if after else len(dry_run)]
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
        assert (resources.get("gpu") == "1") == (rule in GPU_RULES), (
            f"profiles/slurm: {rule} gpu {resources.get('gpu')}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
