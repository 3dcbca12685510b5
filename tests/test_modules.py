"""The package's module seams: no import circle, and every rule lists exactly the library code it runs.

A rule's ``library(...)`` inputs (rules/common.smk) decide what an edit reruns, so they must be the modules its
script imports, directly or through other modules (tests/module_graph.py reads them with ``ast``). ``logs`` is the
one exception: it only routes messages to the rule's log file and decides no output, so editing it reruns nothing.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from module_graph import all_modules, closure, find_cycle, graph, imports_of

REPO = Path(__file__).resolve().parents[1]
NOT_AN_INPUT = {"logs"}
# download_case's modules depend on dataset.source (source_modules() in rules/common.smk; sources/__init__ imports
# the source's module by name), so the static graph cannot check them.
DYNAMIC = {"download_case"}


def rule_libraries() -> dict[str, tuple[str, set[str]]]:
    """rule -> (its script's name, the modules its ``library(...)`` input lists), read from rules/*.smk."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", smk.read_text()):
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            script = re.search(r'script:\s*"\.\./workflow_scripts/(\w+)\.py"', block)
            library = re.search(r"library=library\(([^)]*)\)", block)
            if head and script and library:
                rules[head.group(1)] = (script.group(1), set(re.findall(r'"([\w/]+)"', library.group(1))))
    return rules


def test_the_package_has_no_import_cycle():
    assert find_cycle(graph()) is None


def test_every_module_imports_in_a_fresh_interpreter():
    modules = ["segflow." + name.removesuffix("/__init__").replace("/", ".") for name in all_modules()]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    process = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=REPO / "workflow_scripts",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr[-3000:]


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_rules_cover_every_script_with_a_library_list():
    scripts = {p.stem for p in (REPO / "workflow_scripts").glob("*.py")}
    assert {script for script, _ in rule_libraries().values()} | DYNAMIC == scripts


@pytest.mark.parametrize("rule", sorted(rule_libraries()))
def test_a_rules_library_inputs_are_exactly_the_modules_its_script_runs(rule):
    script, listed = rule_libraries()[rule]
    used = closure(imports_of(REPO / "workflow_scripts" / f"{script}.py"), graph()) - NOT_AN_INPUT
    assert listed == used, f"{rule}: missing {sorted(used - listed)}, not used {sorted(listed - used)}"
