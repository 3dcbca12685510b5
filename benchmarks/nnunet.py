"""nnU-Net v2 (2d) beside segflow on the same cases, under a chosen training budget, scored with segflow's metrics.

Run by hand (never in tests or CI), with the project's Python (it imports segflow's scoring code) and nnU-Net v2
installed in a separate virtual environment:

    python3 -m venv /work/nnunet-venv && /work/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2
    .venv/bin/python benchmarks/nnunet.py --results results/kits23 --work /tmp/nnunet \\
        --nnunet-venv /work/nnunet-venv --device cpu --time-budget-min 30 --iterations-per-epoch 50

Stages (``--stages``, default all, each one can be rerun on its own):

* ``convert``: the ``trainval`` cases of the results dir's ``selection/cases.tsv`` become nnU-Net v2 raw data
  (``Dataset{ID}_{NAME}/imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``), the ``test``
  cases ``imagesTs``. ``--labels regions`` (default) trains the KiTS hierarchical regions (kidney+masses, masses,
  tumour: nnU-Net's region-based training, sigmoid outputs, as nnU-Net's own KiTS setup); ``--labels classes``
  trains the four labels with a softmax. Both predict label maps with segflow's values (1 kidney, 2 tumour, 3 cyst).
* ``plan``: ``nnUNetv2_plan_and_preprocess -d ID -c 2d --verify_dataset_integrity`` with ``-np``/``-npfp``.
* ``train``: ``nnUNetv2_train ID 2d all -tr nnUNetTrainer_segflow``. The trainer is a small subclass of
  nnUNetTrainer written into the nnU-Net venv's ``nnunetv2/training/nnUNetTrainer/`` package, where nnU-Net looks
  trainer classes up by name (the folder itself rather than ``variants/``: see ``install_trainer``). It reads its
  budget from environment variables set here:
  ``--epochs``, ``--iterations-per-epoch``, ``--val-iterations-per-epoch``, and ``--time-budget-min``. With a time
  budget the trainer measures each epoch and, after every epoch, sets the number of epochs to what fits into the
  budget (counted from the start of ``run_training``, data loader start-up included), with the poly learning-rate
  decay stretched or shrunk to end there; it never starts an epoch that is not expected to end within the budget.
  ``--epochs`` caps the count. The final validation of nnU-Net (a full prediction of the validation cases: with
  fold ``all`` that is the training set) is skipped unless ``--final-validation``.
* ``predict``: ``nnUNetv2_predict ... -f all -c 2d`` on the test cases, ``--mirroring on|off`` (nnU-Net's test-time
  mirroring; on is its default).
* ``score``: every prediction against ``raw/<case>/segmentation.nii.gz`` with ``segflow.score.score_files`` (what
  the pipeline's ``score_case`` rule calls) and the schema's default ``score`` section, then
  ``segflow.score.aggregate`` (the ``aggregate_scores`` rule): ``scores.tsv``, ``summary.json``, ``summary.tsv``
  under ``--out``. ``comparison.tsv`` holds one row for nnU-Net and, where the results dir has scores, one for
  segflow's own run; ``nnunet_run.json`` the versions, plans (patch size, batch size, spacing, network), budget,
  commands and timings.

Environment: ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` point under ``--work``;
``nnUNet_n_proc_DA`` is ``--da-workers``; ``nnUNet_compile`` is off on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))

STAGES = ("convert", "plan", "train", "predict", "score")
TRAINER = "nnUNetTrainer_segflow"
HEC = ("kidney_and_masses", "masses", "tumor")

# nnU-Net region-based training for the KiTS HECs: each region is a union of labels, and regions_class_order
# turns the predicted regions back into a label map (kidney region -> 1, then masses -> 3, then tumour -> 2), i.e.
# segflow's and KiTS's label values.
REGION_LABELS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
REGION_CLASS_ORDER = [1, 3, 2]
CLASS_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}

TRAINER_SOURCE = '''"""segflow's budgeted nnUNetTrainer (written by segflow benchmarks/nnunet.py; safe to delete).

Budget from the environment: SEGFLOW_NNUNET_EPOCHS (cap), SEGFLOW_NNUNET_ITERATIONS, SEGFLOW_NNUNET_VAL_ITERATIONS,
SEGFLOW_NNUNET_BUDGET_S (wall-clock seconds for run_training; 0 = none), SEGFLOW_NNUNET_FINAL_VALIDATION (1 = run
nnU-Net's final validation). With a time budget the epoch count is re-estimated after every epoch from the mean
epoch time so far, and the poly learning-rate schedule is rescaled to end at the new count.
"""

import json
import math
import os
from os.path import join
from time import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_segflow(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        env = os.environ
        self.num_epochs = int(env.get("SEGFLOW_NNUNET_EPOCHS", self.num_epochs))
        self.num_iterations_per_epoch = int(env.get("SEGFLOW_NNUNET_ITERATIONS", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            env.get("SEGFLOW_NNUNET_VAL_ITERATIONS", self.num_val_iterations_per_epoch))
        self.segflow_epoch_cap = self.num_epochs
        self.segflow_budget_s = float(env.get("SEGFLOW_NNUNET_BUDGET_S", "0") or 0)
        self.segflow_final_validation = env.get("SEGFLOW_NNUNET_FINAL_VALIDATION", "0") == "1"
        self.segflow_epoch_seconds = []
        self.segflow_estimates = []

    def segflow_replan(self, elapsed):
        """Epochs that fit into the budget, from the mean epoch time so far; the LR decay ends there."""
        per_epoch = sum(self.segflow_epoch_seconds) / len(self.segflow_epoch_seconds)
        fit = self.current_epoch + int(math.floor((self.segflow_budget_s - elapsed) / per_epoch))
        total = max(self.current_epoch, min(self.segflow_epoch_cap, fit))
        self.segflow_estimates.append(total)
        if total != self.num_epochs:
            self.print_to_log_file(f"segflow budget: {elapsed:.0f} s of {self.segflow_budget_s:.0f} s used, "
                                   f"{per_epoch:.1f} s per epoch: {total} epochs in all")
        self.num_epochs = total
        self.lr_scheduler.max_steps = max(total, 1)

    def run_training(self):
        start = time()
        self.on_train_start()
        startup = time() - start
        self.print_to_log_file(f"segflow budget: {self.num_epochs} epochs max x {self.num_iterations_per_epoch} "
                               f"iterations (+{self.num_val_iterations_per_epoch} val), "
                               f"time budget {self.segflow_budget_s:.0f} s, start-up {startup:.1f} s")
        while self.current_epoch < self.num_epochs:
            epoch_start = time()
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = [self.train_step(next(self.dataloader_train))
                             for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(train_outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            self.segflow_epoch_seconds.append(time() - epoch_start)
            if self.segflow_budget_s > 0:
                self.segflow_replan(time() - start)
        self.on_train_end()
        record = {
            "epochs_run": self.current_epoch,
            "epoch_cap": self.segflow_epoch_cap,
            "iterations_per_epoch": self.num_iterations_per_epoch,
            "val_iterations_per_epoch": self.num_val_iterations_per_epoch,
            "batch_size": getattr(self, "batch_size", None),
            "time_budget_s": self.segflow_budget_s,
            "startup_s": startup,
            "run_training_s": time() - start,
            "epoch_seconds": self.segflow_epoch_seconds,
            "epoch_estimates": self.segflow_estimates,
            "initial_lr": self.initial_lr,
            "final_lr": self.optimizer.param_groups[0]["lr"],
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
        }
        with open(join(self.output_folder, "segflow_budget.json"), "w") as handle:
            json.dump(record, handle, indent=2)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.segflow_final_validation:
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("segflow: final validation skipped (fold all validates on the training cases)")
'''


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", required=True, type=Path, help="finished segflow results dir (raw/, selection/)")
    p.add_argument("--work", required=True, type=Path, help="nnU-Net raw/preprocessed/results folders go here")
    p.add_argument("--out", type=Path, help="scores, comparison and run record (default: WORK/out)")
    p.add_argument("--nnunet-venv", type=Path, default=Path(os.environ.get("NNUNET_VENV", "/work/nnunet-venv")))
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--dataset-name", default="segflow")
    p.add_argument(
        "--labels",
        choices=("regions", "classes"),
        default="regions",
        help="regions: KiTS HECs, nnU-Net region-based training (default); classes: 4 labels, softmax",
    )
    p.add_argument("--epochs", type=int, default=1000, help="epochs (the cap when --time-budget-min is given)")
    p.add_argument("--iterations-per-epoch", type=int, default=250)
    p.add_argument("--val-iterations-per-epoch", type=int, help="default: iterations / 5, at least 1")
    p.add_argument("--time-budget-min", type=float, help="wall-clock training budget in minutes")
    p.add_argument("--final-validation", action="store_true", help="run nnU-Net's final validation after training")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--mirroring", choices=("on", "off"), default="on", help="test-time mirroring in prediction")
    p.add_argument(
        "--no-preprocess",
        action="store_true",
        help="plan stage: fingerprint and plans only (nnU-Net's --no_pp), no preprocessed data",
    )
    p.add_argument("--np", type=int, default=2, help="processes for fingerprint and preprocessing")
    p.add_argument("--da-workers", type=int, default=2, help="nnUNet_n_proc_DA (data augmentation workers)")
    p.add_argument("--predict-workers", type=int, default=1, help="nnUNetv2_predict -npp and -nps")
    p.add_argument("--link", choices=("symlink", "copy"), default="symlink", help="how raw files enter imagesTr")
    p.add_argument("--reader", help="dataset.json overwrite_image_reader_writer (default: nnU-Net's choice)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--label", default="nnU-Net 2d", help="name of the nnU-Net row in comparison.tsv")
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {STAGES}")
    if args.val_iterations_per_epoch is None:
        args.val_iterations_per_epoch = max(1, args.iterations_per_epoch // 5)
    args.results, args.work = args.results.resolve(), args.work.resolve()
    args.out = (args.out or args.work / "out").resolve()
    return args


# --- environment -------------------------------------------------------------------------------------------------


def dataset_folder_name(args) -> str:
    return f"Dataset{args.dataset_id:03d}_{args.dataset_name}"


def nnunet_env(args) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(args.work / "nnUNet_raw"),
        nnUNet_preprocessed=str(args.work / "nnUNet_preprocessed"),
        nnUNet_results=str(args.work / "nnUNet_results"),
        nnUNet_n_proc_DA=str(args.da_workers),
        SEGFLOW_NNUNET_EPOCHS=str(args.epochs),
        SEGFLOW_NNUNET_ITERATIONS=str(args.iterations_per_epoch),
        SEGFLOW_NNUNET_VAL_ITERATIONS=str(args.val_iterations_per_epoch),
        SEGFLOW_NNUNET_BUDGET_S=str(round(args.time_budget_min * 60)) if args.time_budget_min else "0",
        SEGFLOW_NNUNET_FINAL_VALIDATION="1" if args.final_validation else "0",
        PATH=f"{args.nnunet_venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    if args.device == "cpu":
        env["nnUNet_compile"] = "false"
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


def tool(args, name: str) -> str:
    path = args.nnunet_venv / "bin" / name
    if not path.exists():
        sys.exit(
            f"{path} not found: install nnU-Net v2 into --nnunet-venv {args.nnunet_venv} "
            "(python3 -m venv DIR && DIR/bin/pip install torch==2.13.0 nnunetv2)"
        )
    return str(path)


def run_logged(args, command: list[str], log_name: str, env: dict) -> float:
    """Run one nnU-Net command with its output in WORK/logs/LOG_NAME.log; return its wall time in seconds."""
    log_dir = args.work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{log_name}.log"
    print(f"[nnunet.py] {' '.join(command)}  (log: {log_path})", flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        sys.exit(
            f"{command[0]} failed (exit {result.returncode}) after {seconds:.0f} s; last lines of {log_path}:\n"
            + "\n".join(tail)
        )
    print(f"[nnunet.py] done in {seconds / 60:.2f} min", flush=True)
    return seconds


def venv_python(args) -> str:
    return str(args.nnunet_venv / "bin" / "python")


def venv_versions(args) -> dict:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({p: m.version(p) for p in ('nnunetv2', 'torch', 'dynamic_network_architectures', "
        "'batchgeneratorsv2', 'SimpleITK', 'nibabel')}))"
    )
    out = subprocess.run([venv_python(args), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# --- stages ------------------------------------------------------------------------------------------------------


def split_cases(results: Path) -> dict[str, list[str]]:
    from segflow.selection import cases_in_split, read_selection

    table = read_selection(results / "selection" / "cases.tsv")
    splits = {split: cases_in_split(table, split) for split in ("trainval", "test")}
    if not splits["trainval"] or not splits["test"]:
        sys.exit(f"{results}/selection/cases.tsv needs selected trainval and test cases, has {splits}")
    for case in splits["trainval"] + splits["test"]:
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            if not (results / "raw" / case / name).is_file():
                sys.exit(f"missing {results / 'raw' / case / name}")
    return splits


def place(source: Path, target: Path, how: str) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    if how == "symlink":
        target.symlink_to(source)
    else:
        shutil.copyfile(source, target)


def convert(args, splits) -> dict:
    root = args.work / "nnUNet_raw" / dataset_folder_name(args)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        folder = root / sub
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    for case in splits["trainval"]:
        place(args.results / "raw" / case / "imaging.nii.gz", root / "imagesTr" / f"{case}_0000.nii.gz", args.link)
        place(args.results / "raw" / case / "segmentation.nii.gz", root / "labelsTr" / f"{case}.nii.gz", args.link)
    for case in splits["test"]:
        place(args.results / "raw" / case / "imaging.nii.gz", root / "imagesTs" / f"{case}_0000.nii.gz", args.link)
        # references for the test cases, for looking at; scoring reads them from the results dir
        place(args.results / "raw" / case / "segmentation.nii.gz", root / "labelsTs" / f"{case}.nii.gz", args.link)
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": REGION_LABELS if args.labels == "regions" else CLASS_LABELS,
        "numTraining": len(splits["trainval"]),
        "file_ending": ".nii.gz",
        "name": args.dataset_name,
        "description": f"segflow results {args.results}: trainval cases (imagesTr) and test cases (imagesTs)",
    }
    if args.labels == "regions":
        dataset["regions_class_order"] = REGION_CLASS_ORDER
    if args.reader:
        dataset["overwrite_image_reader_writer"] = args.reader
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    print(f"[nnunet.py] {root}: {len(splits['trainval'])} training, {len(splits['test'])} test cases", flush=True)
    return dataset


def plan(args, env) -> float:
    command = [
        tool(args, "nnUNetv2_plan_and_preprocess"),
        "-d",
        str(args.dataset_id),
        "-c",
        "2d",
        "--verify_dataset_integrity",
        "-np",
        str(args.np),
        "-npfp",
        str(args.np),
    ]
    if args.no_preprocess:
        command.append("--no_pp")
    return run_logged(args, command, "plan_and_preprocess", env)


def install_trainer(args) -> Path:
    """Write the trainer into nnunetv2's trainer package of the venv, where nnU-Net looks trainers up by name.

    nnU-Net imports the modules of ``nnunetv2/training/nnUNetTrainer`` one by one until one has the class: first
    the modules of the folder itself, then its subpackages in alphabetical order (``primus`` before ``variants``).
    ``primus`` imports timm, and timm torchvision; PyPI's torchvision wheels are built against CUDA torch, so with
    the CPU build of torch that import fails ("operator torchvision::nms does not exist") and a trainer under
    ``variants/`` is never reached. A module in the folder itself is found before any subpackage is imported.
    """
    code = "import os, nnunetv2; print(os.path.dirname(nnunetv2.__file__))"
    package = Path(
        subprocess.run([venv_python(args), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    )
    folder = package / "training" / "nnUNetTrainer"
    stale = folder / "variants" / "segflow"  # where an earlier version of this script put it
    if stale.exists():
        shutil.rmtree(stale)
    target = folder / f"{TRAINER}.py"
    target.write_text(TRAINER_SOURCE)
    return target


def trainer_folder(args) -> Path:
    return args.work / "nnUNet_results" / dataset_folder_name(args) / f"{TRAINER}__nnUNetPlans__2d"


def train(args, env) -> float:
    install_trainer(args)
    fold_dir = trainer_folder(args) / "fold_all"
    if fold_dir.exists():
        shutil.rmtree(fold_dir)  # a fresh training every time: the budget is measured from scratch
    command = [tool(args, "nnUNetv2_train"), str(args.dataset_id), "2d", "all", "-tr", TRAINER, "-device", args.device]
    return run_logged(args, command, "train", env)


def prediction_folder(args) -> Path:
    return args.out / f"predictions_mirroring_{args.mirroring}"


def predict(args, env) -> float:
    out = prediction_folder(args)
    if out.exists():
        shutil.rmtree(out)
    command = [
        tool(args, "nnUNetv2_predict"),
        "-i",
        str(args.work / "nnUNet_raw" / dataset_folder_name(args) / "imagesTs"),
        "-o",
        str(out),
        "-d",
        str(args.dataset_id),
        "-c",
        "2d",
        "-f",
        "all",
        "-tr",
        TRAINER,
        "-device",
        args.device,
        "-npp",
        str(args.predict_workers),
        "-nps",
        str(args.predict_workers),
        "--disable_progress_bar",
    ]
    if args.mirroring == "off":
        command.append("--disable_tta")
    return run_logged(args, command, f"predict_mirroring_{args.mirroring}", env)


def default_score_config() -> dict:
    """The schema's default ``score`` section (KiTS HECs, labels, KiTS23 tolerances), as the pipeline uses it."""
    import yaml

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    properties = schema["properties"]["score"]["properties"]
    return {key: spec["default"] for key, spec in properties.items()}


def score(args, splits) -> dict:
    from segflow.io import write_json
    from segflow.score import aggregate, json_scores, score_files

    score_cfg = default_score_config()
    case_dir = args.out / "cases"
    case_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    start = time.monotonic()
    for case in splits["test"]:
        prediction = prediction_folder(args) / f"{case}.nii.gz"
        reference = args.results / "raw" / case / "segmentation.nii.gz"
        scores = score_files(prediction, reference, score_cfg)
        path = case_dir / f"{case}.json"
        write_json(path, {"case_id": case, "scores": json_scores(scores)})
        paths.append(path)
        print(
            f"[nnunet.py] {case}: " + " ".join(f"{k}={scores[k]:.4f}" for k in (f"dice_{r}" for r in HEC)), flush=True
        )
    aggregate(
        paths, splits["test"], args.out / "scores.tsv", args.out / "summary.json", args.out / "summary.tsv", score_cfg
    )
    return {"score_s": time.monotonic() - start, "score_config": score_cfg}


# --- record and comparison ---------------------------------------------------------------------------------------


def plans_summary(args) -> dict:
    folder = args.work / "nnUNet_preprocessed" / dataset_folder_name(args)
    path = folder / "nnUNetPlans.json"
    if not path.exists():
        return {}
    plans = json.loads(path.read_text())
    config = plans["configurations"]["2d"]
    arch = config.get("architecture", {}).get("arch_kwargs", {})
    return {
        "plans_file": str(path),
        "patch_size": config.get("patch_size"),
        "batch_size": config.get("batch_size"),
        "spacing": config.get("spacing"),
        "median_image_size_in_voxels": config.get("median_image_size_in_voxels"),
        "normalization_schemes": config.get("normalization_schemes"),
        "resampling_fn_data": config.get("resampling_fn_data"),
        "network": config.get("architecture", {}).get("network_class_name"),
        "n_stages": arch.get("n_stages"),
        "features_per_stage": arch.get("features_per_stage"),
        "original_median_spacing_after_transp": plans.get("original_median_spacing_after_transp"),
        "transpose_forward": plans.get("transpose_forward"),
        "foreground_intensity_properties": plans.get("foreground_intensity_properties_per_channel"),
    }


def segflow_row(results: Path, test_cases: list[str]) -> dict | None:
    """segflow's own row from the results dir: summary.json and the train/predict rule benchmarks."""
    import pandas as pd

    summary_path = results / "scores" / "summary.json"
    if not summary_path.exists():
        return None
    summary = json.loads(summary_path.read_text())
    scored = list(pd.read_csv(results / "scores" / "scores.tsv", sep="\t", dtype={"case_id": str})["case_id"])

    def minutes(rule: str) -> float | None:
        files = sorted((results / "benchmarks" / rule).glob("*.tsv"))
        if not files:
            return None
        return sum(float(pd.read_csv(f, sep="\t")["s"].iloc[0]) for f in files) / 60

    row = {"method": "segflow (this results dir)", "n_cases": summary["n_cases"]}
    for metric in ("dice", "sd"):
        for region in HEC:
            row[f"{metric}_{region}"] = summary["metrics"][f"{metric}_{region}"]["mean"]
    row["train_min"] = minutes("train_round")
    row["predict_min"] = minutes("predict_case")
    row["same_cases"] = sorted(scored) == sorted(test_cases)
    return row


def nnunet_row(args, record: dict, n_cases: int) -> dict:
    summary = json.loads((args.out / "summary.json").read_text())
    row = {"method": args.label, "n_cases": n_cases}
    for metric in ("dice", "sd"):
        for region in HEC:
            row[f"{metric}_{region}"] = summary["metrics"][f"{metric}_{region}"]["mean"]
    timings = record.get("timings_s", {})
    row["train_min"] = timings["train"] / 60 if "train" in timings else None
    row["predict_min"] = timings["predict"] / 60 if "predict" in timings else None
    row["same_cases"] = True
    return row


def write_comparison(args, record, splits) -> list[dict]:
    import pandas as pd

    rows = [nnunet_row(args, record, len(splits["test"]))]
    own = segflow_row(args.results, splits["test"])
    if own:
        rows.append(own)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "comparison.tsv", sep="\t", index=False, float_format="%.4f")
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "nnunet_run.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.setdefault("timings_s", {})
    env = nnunet_env(args)
    splits = split_cases(args.results)
    record.update(
        results=str(args.results),
        work=str(args.work),
        dataset=dataset_folder_name(args),
        cases={"trainval": splits["trainval"], "test": splits["test"]},
        host={"machine": platform.machine(), "cpus": os.cpu_count(), "processor": cpu_model()},
        versions=venv_versions(args),
    )
    record.setdefault("options", {})
    stage_options = {
        "convert": {"labels": args.labels, "link": args.link, "reader": args.reader},
        "plan": {"np": args.np, "no_preprocess": args.no_preprocess},
        "train": {
            "epochs": args.epochs,
            "iterations_per_epoch": args.iterations_per_epoch,
            "val_iterations_per_epoch": args.val_iterations_per_epoch,
            "time_budget_min": args.time_budget_min,
            "device": args.device,
            "da_workers": args.da_workers,
            "final_validation": args.final_validation,
            "trainer": TRAINER,
        },
        "predict": {"mirroring": args.mirroring, "device": args.device, "workers": args.predict_workers},
    }
    for stage in args.stages:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if stage == "convert":
            record["dataset_json"] = convert(args, splits)
        elif stage == "plan":
            record["timings_s"]["plan"] = plan(args, env)
            record["plans"] = plans_summary(args)
        elif stage == "train":
            record["timings_s"]["train"] = train(args, env)
            fold_dir = trainer_folder(args) / "fold_all"
            budget = fold_dir / "segflow_budget.json"
            record["trainer_budget"] = json.loads(budget.read_text()) if budget.exists() else None
            kept = args.out / "train"  # the next training erases fold_all: keep its small files with the scores
            kept.mkdir(exist_ok=True)
            for path in [budget, fold_dir / "progress.png", *fold_dir.glob("training_log_*.txt")]:
                if path.exists():
                    shutil.copy2(path, kept / path.name)
        elif stage == "predict":
            record["timings_s"]["predict"] = predict(args, env)
        elif stage == "score":
            scored = score(args, splits)
            record["timings_s"]["score"] = scored["score_s"]
            record["score_config"] = scored["score_config"]
        if stage in stage_options:
            record["options"][stage] = stage_options[stage]
        record.setdefault("stage_started_utc", {})[stage] = started
        record["plans"] = record.get("plans") or plans_summary(args)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    if (args.out / "summary.json").exists():
        rows = write_comparison(args, record, splits)
        print_summary(rows)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_summary(rows: list[dict]) -> None:
    def fmt(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    print(
        "\nmethod | cases | HEC Dice k+m / masses / tumour | surface Dice k+m / masses / tumour | "
        "train min | predict min"
    )
    for row in rows:
        dice = " / ".join(fmt(row[f"dice_{r}"]) for r in HEC)
        sd = " / ".join(fmt(row[f"sd_{r}"]) for r in HEC)
        train_min = "-" if row["train_min"] is None else f"{row['train_min']:.1f}"
        predict_min = "-" if row["predict_min"] is None else f"{row['predict_min']:.1f}"
        print(f"{row['method']} | {row['n_cases']} | {dice} | {sd} | {train_min} | {predict_min}")


if __name__ == "__main__":
    main()
