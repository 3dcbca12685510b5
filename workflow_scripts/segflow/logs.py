"""Logging for rule scripts: everything a stage says goes to the rule's log file, nothing is lost on a crash."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path


def setup_logging(log_path: str | Path | None, level: int = logging.INFO) -> logging.Logger:
    """Send logging records, warnings and uncaught tracebacks to ``log_path`` (stderr if ``None``).

    stderr is redirected too, so messages from MONAI, torch and numpy land in the same file.
    """
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1)
        sys.stderr = stream
        sys.stdout = stream
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    return logging.getLogger("segflow")


def run_logged(main, log_path: str | Path | None, what: str) -> None:
    """Run ``main()`` with logging into ``log_path``; on failure, log the traceback and exit with one clear line.

    The one line (``segflow: <what>: <error>``) goes to the terminal the user watches; the full traceback stays
    in the log file that Snakemake names in its error report. The last line of a successful log says how long
    ``main()`` took: the work, apart from starting Python and the script's imports (benchmarks/job_overhead.py).
    """
    terminal = sys.__stderr__
    logger = setup_logging(log_path)
    start = time.perf_counter()
    try:
        main()
    except Exception as error:  # report every failure the same way, then let Snakemake see the exit status
        logger.exception("%s failed", what)
        print(f"segflow: {what}: {type(error).__name__}: {error}", file=terminal, flush=True)
        raise SystemExit(1) from None
    logger.info("%s: work done in %.3f s", what, time.perf_counter() - start)
