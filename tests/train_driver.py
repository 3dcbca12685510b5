"""Run one training round from a JSON description: the process a resume test can kill (python train_driver.py ARGS)."""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from segflow.train import RoundOutputs, train_round  # noqa: E402

if __name__ == "__main__":
    args = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    outputs = RoundOutputs(*(Path(args["out"]) / n for n in ["model_best.pt", "model_last.pt", "metrics.csv", "split.json", "curves.png"]))
    dirs = {name: Path(path) for name, path in args["cases"].items()}
    train_round(dirs, {c: c for c in dirs}, 0, args["train"], args["seed"], outputs)
