"""Rule select_model: compare every round on the fixed holdout, keep the best round (or an ensemble of the best
rounds), and decide the post-processing (and infer.region_thresholds, infer.mass_seed and infer.slice_sigma_mm)
on the holdout or on every case the kept model never trained on."""

import logging
from pathlib import Path

from segflow.checkpoints import export_checkpoint, save_ensemble
from segflow.io import read_json, write_json, write_table
from segflow.logs import run_logged
from segflow.model_selection import decide_postprocessing, evaluate_on_holdout, select_best_round, unseen_cases
from segflow.selection import read_selection
from segflow.train import holdout_patients


def main(smk):
    cfg = smk.params.train
    table = read_selection(smk.input.selection).set_index("case_id")
    case_dirs = {Path(d).name: Path(d) for d in smk.input.cases}
    held_out = holdout_patients(
        [table.loc[c, "patient_id"] for c in case_dirs], cfg["holdout_fraction"], smk.params.seed
    )
    holdout_dirs = [d for c, d in sorted(case_dirs.items()) if table.loc[c, "patient_id"] in held_out]
    logging.info("fixed holdout: %s", [d.name for d in holdout_dirs] or "none (train.holdout_fraction is 0)")
    holdout = evaluate_on_holdout(list(smk.input.models), holdout_dirs, cfg, smk.threads, smk.params.regions)
    choice = select_best_round(
        list(smk.input.metrics),
        list(smk.input.models),
        holdout,
        cfg["select_by"],
        cfg["ensemble"],
        cfg["keep_epoch"],
    )
    epoch = int(choice["table"].set_index("round").loc[choice["round"], "best_epoch"]) + 1
    logging.info(
        "selected round %d by %s: its epoch %d (train.keep_epoch %s), val loss %.4f",
        choice["round"],
        choice["select_by"],
        epoch,
        choice["keep_epoch"],
        choice["val_loss"],
    )
    if len(choice["ensemble"]) > 1:
        logging.info("ensemble of rounds %s (mean softmax)", choice["ensemble_rounds"])
        save_ensemble(smk.output.best, choice["ensemble"])
    else:
        export_checkpoint(smk.output.best, choice["checkpoint"])
    decision_dirs = holdout_dirs
    if cfg["postprocess_on"] == "unseen":
        splits = [read_json(path) for path in smk.input.splits]
        decision_dirs = [case_dirs[c] for c in unseen_cases(sorted(case_dirs), splits, choice["ensemble_rounds"])]
    decision = decide_postprocessing(
        smk.output.best,
        decision_dirs,
        cfg["postprocess"],
        smk.params.infer,
        smk.params.regions,
        smk.threads,
        prune=cfg["postprocess_prune"],
    )
    write_table(smk.output.rounds, choice["table"])
    summary = {k: v for k, v in choice.items() if k != "table"}
    write_json(
        smk.output.summary,
        {
            **summary,
            "postprocess": decision["steps"],
            "postprocess_table": decision["table"],
            "postprocess_on": cfg["postprocess_on"],
            "postprocess_prune": cfg["postprocess_prune"],
            "postprocess_cases": decision["cases"],
            "region_thresholds": decision["thresholds"],
            "mass_seed": decision["mass_seed"],
            "slice_sigma_mm": decision["slice_sigma_mm"],
            "threshold_table": decision["threshold_table"],
        },
    )


run_logged(lambda: main(snakemake), snakemake.log[0], "select_model")  # noqa: F821
