"""The report in a real browser: headless Chromium renders the fabricated report (tests/report_inputs.py), every
image loads, the tables are there, no script fails, and clicking a heading sorts the per-case table.

The page's own script writes what it saw into <div id="report-status"> on load; Chromium's --dump-dom prints the
DOM after that, and the test reads the element back. The screenshot is kept as test-artifacts/report.png.
Needs Debian's chromium package (`apt-get install -y --no-install-recommends chromium`); skipped without it.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_inputs import ORGAN_CONFIG, TEST_CASES, fabricate_report, shared_report

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "test-artifacts" / "report.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Offline and quiet: no network services, no first-run or sync machinery, no GPU on CI machines.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y --no-install-recommends chromium)"
)

# Injected into a copy of the report: sorts the per-case table by Dice (column 1) and by tumour HD95 (column 13,
# undefined for case_c), twice each, and writes the case orders into <div id="sort-probe">.
SORT_PROBE = """<script>
window.addEventListener('load', () => {
  const table = document.getElementById('scores-kits');
  const probe = document.createElement('div');
  probe.id = 'sort-probe';
  for (const [name, column] of [['dice', 1], ['hd95', 13]]) {
    const heading = table.querySelector(`th[data-column='${column}']`);
    for (const click of ['first', 'second']) {
      heading.click();
      probe.dataset[name + click] = Array.from(table.tBodies[0].rows, row => row.cells[0].textContent).join(',');
      probe.dataset[name + click + 'aria'] = heading.getAttribute('aria-sort');
    }
  }
  document.body.appendChild(probe);
});
</script>
"""


def chromium(profile: Path, *args: str) -> str:
    """Run Chromium with a fresh profile; return its stdout (the DOM with --dump-dom)."""
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout


def element_data(dom: str, element_id: str) -> dict[str, str]:
    tag = re.search(rf'<div id="{element_id}"[^>]*>', dom)
    assert tag, f"#{element_id} missing: the page's script did not run"
    return dict(re.findall(r'data-([a-z0-9-]+)="([^"]*)"', tag.group(0)))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return shared_report(tmp_path_factory)


def test_report_renders_with_every_image_and_no_script_error(report, tmp_path):
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", report.as_uri())
    status = element_data(dom, "report-status")
    assert status["ready"] == "yes"
    assert status["errors"] == ""
    assert status["broken"] == "0"
    assert status["images"] == "7"  # rule graph, all-round curves, 2 rounds, 3 overlays
    assert int(status["tables"]) >= 8

    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    chromium(tmp_path / "profile_screenshot", "--window-size=1200,4400", f"--screenshot={SCREENSHOT}", report.as_uri())
    assert SCREENSHOT.stat().st_size > 50_000  # a blank page is a few kB


def test_clicking_a_heading_sorts_the_per_case_table(report, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", SORT_PROBE + "</body>"))
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    orders = element_data(dom, "sort-probe")
    assert set(TEST_CASES) == set(orders["dicefirst"].split(","))
    assert orders["dicefirst"] == "case_c,case_a,case_b" and orders["dicefirstaria"] == "ascending"
    assert orders["dicesecond"] == "case_b,case_a,case_c" and orders["dicesecondaria"] == "descending"
    # Undefined HD95 (case_c missed its tumour) sorts last both ways.
    assert orders["hd95first"] == "case_b,case_a,case_c"
    assert orders["hd95second"] == "case_a,case_b,case_c"
    assert element_data(dom, "report-status")["errors"] == ""


def test_organ_report_renders_with_names_and_colours_from_the_config(tmp_path):
    """A FLARE22-like label set: per-organ rows and overlays in the configured colours, no script error."""
    report = fabricate_report(tmp_path / "organs", ORGAN_CONFIG)
    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", report.as_uri())
    status = element_data(dom, "report-status")
    assert status["ready"] == "yes" and status["errors"] == "" and status["broken"] == "0"
    assert status["images"] == "7"
    assert "liver" in dom and "spleen" in dom and "#d2691e" in dom
