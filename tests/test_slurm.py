"""The tiny pipeline through a real single-node SLURM cluster (tests/slurm/run_slurm_test.sh).

It installs and starts slurm-wlm and munge, so it needs root and apt: it runs when SEGFLOW_SLURM=1 and is skipped
otherwise.
`make test-slurm` (which CI's .ci/run calls after `make test`) runs the script directly.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    os.environ.get("SEGFLOW_SLURM") != "1", reason="set SEGFLOW_SLURM=1 to run the SLURM test (needs root)"
)
def test_tiny_pipeline_through_slurm_matches_a_local_run():
    script = REPO / "tests" / "slurm" / "run_slurm_test.sh"
    process = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=1800,
    )
    assert process.returncode == 0, process.stdout[-5000:] + process.stderr[-5000:]
    assert "SLURM end-to-end test passed" in process.stdout
