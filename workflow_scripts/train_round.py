"""Rule train_round: train one round, starting from the previous round's best checkpoint when there is one."""

from pathlib import Path

from segflow.logs import run_logged
from segflow.selection import read_selection
from segflow.train import RoundOutputs, train_round


def main(smk):
    table = read_selection(smk.input.selection).set_index("case_id")
    case_dirs = {Path(d).name: Path(d) for d in smk.input.cases}
    patients = {case: table.loc[case, "patient_id"] for case in case_dirs}
    outputs = RoundOutputs(**{name: Path(smk.output[name]) for name in RoundOutputs.__dataclass_fields__})
    train_round(
        case_dirs,
        patients,
        int(smk.wildcards.round),
        smk.params.train,
        smk.params.seed,
        outputs,
        init_checkpoint=Path(smk.input.init[0]) if smk.input.init else None,
        threads=smk.threads,
        n_classes=smk.params.label_set["n_classes"],
        class_names={int(value): name for value, name in smk.params.label_set["names"].items()},
        regions=smk.params.regions,
    )


run_logged(lambda: main(snakemake), snakemake.log[0], f"train_round {snakemake.wildcards.round}")  # noqa: F821
