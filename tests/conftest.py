"""Shared test setup: the segflow package on sys.path, and the repository root for integration tests."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow_scripts"))
