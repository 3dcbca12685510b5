"""Run one training round from a JSON description, as the rule script does: python train_driver.py ARGS.

The process a resume test can kill; failures (SIGTERM included) exit with status 1 and one line on stderr.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow_scripts"))

from segflow.logs import run_logged  # noqa: E402
from segflow.train import RoundOutputs, train_round  # noqa: E402


def main(args: dict) -> None:
    outputs = RoundOutputs(
        *(Path(args["out"]) / n for n in ["model_best.pt", "model_last.pt", "metrics.csv", "split.json"])
    )
    dirs = {name: Path(path) for name, path in args["cases"].items()}
    train_round(dirs, {c: c for c in dirs}, 0, args["train"], args["seed"], outputs)


if __name__ == "__main__":
    run_logged(lambda: main(json.loads(Path(sys.argv[1]).read_text())), None, "train_round")
