"""Conda environments: each parses, each rule names one that exists, and the pins agree with requirements.txt.

conda itself is not reachable on the test machine, so this checks everything that can be checked without it.
"""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def rule_envs() -> dict[str, str]:
    """rule name -> the path its conda: directive names, resolved from the rules/ folder."""
    envs = {}
    for smk in (REPO / "rules").glob("*.smk"):
        for block in re.split(r"^(?=(?:rule|checkpoint) )", smk.read_text(), flags=re.M)[1:]:
            name = re.match(r"(?:rule|checkpoint) (\w+):", block).group(1)
            conda = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, flags=re.M)
            envs[name] = str((smk.parent / conda.group(1)).resolve()) if conda else ""
    return envs


def test_every_env_parses_with_channels_and_pinned_dependencies():
    for path in (REPO / "envs").glob("*.yaml"):
        env = yaml.safe_load(path.read_text())
        assert env["channels"], path.name
        for dependency in env["dependencies"]:
            assert isinstance(dependency, str) and re.fullmatch(r"[\w.\-]+=[\w.\-]+", dependency), (
                path.name,
                dependency,
            )


def test_every_rule_names_an_existing_env():
    envs = rule_envs()
    assert len(envs) >= 10
    for rule, path in envs.items():
        assert path, f"rule {rule} has no conda: directive"
        assert Path(path).is_file(), f"rule {rule} names missing env {path}"


def test_env_pins_agree_with_requirements():
    pins = requirement_pins()
    for path in (REPO / "envs").glob("*.yaml"):
        for dependency in yaml.safe_load(path.read_text())["dependencies"]:
            name, version = dependency.split("=", 1)
            pip_name = CONDA_TO_PIP.get(name, name).lower()
            if name == "python":
                continue
            assert pip_name in pins, f"{path.name}: {name} is not pinned in requirements.txt"
            assert pins[pip_name] == version, f"{path.name}: {name}={version} but requirements.txt has {pins[pip_name]}"
