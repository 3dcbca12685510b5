"""The report in a real browser: headless Chromium renders it, every image loads, no script errors.

Needs Debian's chromium (.ci/run installs it); skipped with a reason where it is missing. The screenshot is kept
in test-artifacts/report.png.
"""

import re
import shutil
import subprocess

import pytest

from workflow import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    report = (tiny_run / "results/report/report.html").as_uri()
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", report).stdout
    status = re.search(r'<div id="report-status"[^>]*>', dom)
    assert status, "the page's script did not run"
    fields = dict(re.findall(r'data-([a-z]+)="([^"]*)"', status.group(0)))
    assert fields["ready"] == "yes" and fields["errors"] == ""
    assert int(fields["images"]) >= 4 and fields["broken"] == "0"  # DAG, curves of 2 rounds, overlays
    assert int(fields["tables"]) >= 5

    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    screenshot = artifacts / "report.png"
    screenshot.unlink(missing_ok=True)
    chromium(tmp_path, "--window-size=1200,4000", f"--screenshot={screenshot}", report)
    assert screenshot.exists() and screenshot.stat().st_size > 50_000
