"""Checkpoint select_cases: filter inspected cases and split the selected ones by patient.

One summary line goes to the terminal on every run; a selection that cannot train and test fails here, at once."""

import logging
import sys

from segflow.io import read_json
from segflow.logs import run_logged
from segflow.selection import check_trainable, select_cases, summary_line, write_selection


def main(smk):
    table = select_cases([read_json(p) for p in smk.input.inspections], smk.params.selection, smk.params.seed)
    for row in table.itertuples():
        logging.info("%s: %s", row.case_id, row.split if row.selected else f"left out: {row.reason}")
    summary = summary_line(table, smk.params.selection, smk.output.table)
    logging.info("%s", summary)
    print(f"segflow: select_cases: {summary}", file=sys.__stderr__, flush=True)
    check_trainable(table, smk.params.selection, smk.log[0])
    write_selection(smk.output.table, table)


run_logged(lambda: main(snakemake), snakemake.log[0], "select_cases")  # noqa: F821
