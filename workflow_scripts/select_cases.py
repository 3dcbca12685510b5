"""Checkpoint select_cases: filter inspected cases and split the selected ones by patient."""

import logging

from segflow.io import read_json
from segflow.logs import run_logged
from segflow.selection import select_cases, write_selection


def main(smk):
    table = select_cases([read_json(p) for p in smk.input.inspections], smk.params.selection, smk.params.seed)
    for row in table.itertuples():
        logging.info("%s: %s", row.case_id, row.split if row.selected else f"left out: {row.reason}")
    write_selection(smk.output.table, table)


run_logged(lambda: main(snakemake), snakemake.log[0], "select_cases")  # noqa: F821
