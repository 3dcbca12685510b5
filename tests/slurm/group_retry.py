"""A failed job in a group job: the group's finished jobs keep their results, and the rerun redoes only the rest.

Usage: group_retry.py SLURM_RUN_DIR SNAKEMAKE   (after the SLURM run of run_slurm_test.sh, on the same cluster)

The predict group holds predict_case and score_case of every test case (the tiny config has two: one group job).
1. The reference segmentation of one test case is truncated (its modification time kept, so nothing upstream
   reruns) and predict_case is forced for every test case through the test profile (`--forcerun predict_case`,
   the test cases' score files as targets). That case's score_case fails, so the group job fails; its predict_case,
   which score_case waits for, has finished in the same group job by then, and the other case's jobs may have too.
2. Checked: the failed job has no output; every job that finished inside the failed group job (its SLURM log
   says so) still has its output (keep-incomplete: Snakemake would otherwise delete the outputs of every job of
   a failed group job).
3. The file is restored and the same targets without --forcerun run again: Snakemake plans, submits and runs
   exactly the jobs without an output, the failed one among them; the finished jobs' outputs are untouched.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from check_slurm_run import SUBMITTED, group_members

PROFILE = ["--profile", "slurm_test_profile", "--configfile", "config/tiny.yaml"]


def run(workdir: Path, snakemake: str, log_name: str, *args: str) -> tuple[int, str]:
    process = subprocess.run([snakemake, *PROFILE, *args], cwd=workdir, capture_output=True, text=True)
    (workdir / log_name).write_text(process.stdout + process.stderr)
    return process.returncode, process.stdout + process.stderr


def jobs_run(log: str) -> dict[int, list[tuple[str, str]]]:
    """(rule, case) of the jobs each SLURM job of this Snakemake log ran to the end, by SLURM job id."""
    return {int(job_id): group_members(Path(path)) for _, job_id, path in SUBMITTED.findall(log)}


def main(workdir: Path, snakemake: str) -> None:
    results = workdir / "results"
    table = (results / "selection/cases.tsv").read_text().splitlines()
    header = table[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in table[1:]]
    test_cases = sorted(row["case_id"] for row in rows if row["selected"] == "true" and row["split"] == "test")
    output = {("predict_case", case): results / "predictions" / f"{case}.nii.gz" for case in test_cases}
    output.update({("score_case", case): results / "scores/cases" / f"{case}.json" for case in test_cases})
    failing = ("score_case", test_cases[0])
    reference = results / "raw" / test_cases[0] / "segmentation.nii.gz"
    backup = workdir / "segmentation.backup.nii.gz"
    shutil.copy2(reference, backup)
    stat = reference.stat()
    reference.write_bytes(backup.read_bytes()[:200])
    os.utime(reference, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    # The score files are the targets: with the run's later outputs (scores.tsv, the report) still there, a
    # missing score file is rerun only when asked for (Snakemake reruns from the targets down).
    targets = [str(path.relative_to(workdir)) for (rule, _), path in output.items() if rule == "score_case"]
    code, log = run(workdir, snakemake, "retry_failed.log", "--forcerun", "predict_case", "--", *targets)
    assert code != 0, "the run with a truncated segmentation did not fail"
    failed_job = next(
        int(job_id) for _, job_id, path in SUBMITTED.findall(log) if f"case={test_cases[0]}" in Path(path).read_text()
    )
    finished = jobs_run(log)[failed_job]
    assert not output[failing].exists(), f"{failing} failed but has an output"
    assert ("predict_case", test_cases[0]) in finished, f"SLURM job {failed_job} finished only {finished}"
    kept = {job: output[job].stat().st_mtime_ns for job in finished}  # raises if keep-incomplete did not keep it
    missing = sorted(job for job, path in output.items() if not path.exists())

    shutil.copy2(backup, reference)  # copy2 keeps the original modification time
    code, log = run(workdir, snakemake, "retry_rerun.log", "--", *targets)
    assert code == 0, f"the rerun failed: {workdir / 'retry_rerun.log'}"
    rerun = sorted(job for jobs in jobs_run(log).values() for job in jobs)
    assert rerun == missing and failing in rerun, f"the rerun ran {rerun}, expected the jobs without output {missing}"
    for job, mtime in kept.items():
        assert output[job].stat().st_mtime_ns == mtime, f"{job} was redone"
    print(
        f"group retry: {failing} failed in SLURM job {failed_job} after {finished} finished there (kept); "
        f"the rerun ran exactly {rerun}"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main(Path(sys.argv[1]).resolve(), sys.argv[2])
