"""pyproject.toml and environment.yml must list the same dependencies (conda and pip users get one product)."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"python-isal": "isal"}


def _name(requirement: str) -> str:
    name = re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")
    return CONDA_TO_PYPI.get(name, name)


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]} | {_name(r) for r in project["optional-dependencies"]["dev"]}
    listed = set()
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        match = re.match(r"^  - ([A-Za-z0-9_.\-]+)", line)
        if in_deps and match:
            listed.add(_name(match.group(1)))
    listed -= {"python", "pip"}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def test_environment_yml_pins_the_same_lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {_name(r): r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    text = (ROOT / "environment.yml").read_text()
    conda = {pypi: conda for conda, pypi in CONDA_TO_PYPI.items()}
    for name, requirement in pins.items():
        spelled = conda.get(name, name) + requirement[len(name) :]
        assert re.search(rf"^  - {re.escape(spelled)}( +#.*)?$", text, re.M), f"environment.yml should say '{spelled}'"


def test_ci_runs_the_readme_test_command_then_the_suite_without_shared_data():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    (command,) = re.findall(r"^python3 -m venv \.venv && .*-m pytest$", readme, flags=re.M)
    assert any(line == command or line.startswith(command + " ") for line in ci.splitlines()), (
        ".ci/run should run exactly the README's test command"
    )
    second = [line for line in ci.splitlines() if "VOLCAST_HIDE_SHARED=1" in line and "-m pytest" in line]
    assert second, ".ci/run should run the suite a second time with VOLCAST_HIDE_SHARED=1"
