"""What a run would submit to the cluster: Snakemake's own DAG, groups and local/remote decision, without running.

Usage (in a workflow folder): python plan_jobs.py SNAKEMAKE_ARGS...   e.g.  -n --profile profiles/slurm ...

A dry run (`-n`) cannot show this itself: Snakemake 9 replaces the executor by its dry-run executor, which runs
every job locally and one by one, so it prints neither group jobs nor which rules are local. This script runs the
same dry run in-process and, once the DAG is built (groups and --group-components applied), asks Snakemake's own
objects what the SLURM executor would get: the units the scheduler hands to an executor (one per group job, or per
job in no group), and `job.is_local` with a non-local executor says whether a
unit runs on the submit host (`Workflow.is_local`: a localrule that is in no group). Nothing is executed.

Prints one line "PLAN {json}": {"submitted": [{"group": name or null, "rules": {rule: jobs}, "resources": {_cores,
mem_mb, runtime, gpu: what sbatch would be asked for}}, ...], "local": {rule: jobs}}.
"""

import json
import sys
from collections import Counter

from snakemake import cli
from snakemake.scheduling import job_scheduler
from snakemake.workflow import Workflow


def plan(dag) -> dict:
    # The decision Snakemake makes under a cluster executor (the dry-run executor would say "local" for all).
    Workflow.local_exec = property(lambda self: False)
    submitted, local = [], Counter()
    # What the scheduler hands to the executor: a group job, or a job in no group (as DAG.get_jobs_or_groups).
    units = {}
    for job in dag.needrun_jobs():
        unit = dag._group.get(job, job)
        units.setdefault(id(unit), unit)
    for unit in units.values():
        jobs = list(unit.jobs) if unit.is_group() else [unit]
        if unit.is_local:
            local.update(job.rule.name for job in jobs)
        else:
            group = unit.groupid if unit.is_group() else None
            resources = {name: unit.resources.get(name) for name in ("_cores", "mem_mb", "runtime", "gpu")}
            submitted.append(
                {"group": group, "rules": dict(Counter(job.rule.name for job in jobs)), "resources": resources}
            )
    return {"submitted": submitted, "local": dict(local)}


def schedule_instead(self):
    print("PLAN " + json.dumps(plan(self.workflow.dag)), flush=True)
    return True


if __name__ == "__main__":
    job_scheduler.JobScheduler.schedule = schedule_instead
    sys.exit(cli.main(sys.argv[1:]))
