"""The install itself: the package map is complete, and the CLI stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "vllm", "transformers", "trl", "peft", "duckdb", "kafka", "fastapi", "pyarrow")


def test_every_package_folder_is_listed_in_pyproject() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = tool["package-dir"]
    listed = set(tool["packages"])
    found = set()
    for package, folder in package_dir.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *relative)))
    assert found == listed


def test_help_and_config_check_do_not_import_the_heavy_stack() -> None:
    example = str(REPO / "evolvd.yaml")
    code = (
        "import sys; from click.testing import CliRunner; from evolvd.cli import main\n"
        f"r = CliRunner().invoke(main, ['config', 'check', {example!r}]); assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_evolvd_command_is_installed() -> None:
    result = subprocess.run(
        [Path(sys.executable).parent / "evolvd", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "version" in result.stdout


PACKAGE_FOLDERS = ("daemon", "connectors", "policies")


def requirement_names(requirements: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(r) for r in requirements]
    return {canonicalize_name(r.name): r for r in parsed}


def test_the_package_declares_every_distribution_its_code_imports_and_no_other() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # An optional integration's import is declared by its extra (e.g. `ray` for training.launcher:
    # ray, imported only where it is used); the test-only `dev` extra declares nothing of the package.
    extras = [r for name, rs in project["optional-dependencies"].items() if name != "dev" for r in rs]
    declared = requirement_names(project["dependencies"] + extras)
    distributions = packages_distributions()
    undeclared: dict[str, str] = {}
    for folder in PACKAGE_FOLDERS:
        for source in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for top in {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"evolvd"}:
                    owners = {canonicalize_name(d) for d in distributions.get(top, [top])}
                    if not owners & declared.keys():
                        undeclared[top] = str(source.relative_to(REPO))
    assert undeclared == {}, "imported but not in [project] dependencies or an extra"
    assert "openai" not in requirement_names(project["dependencies"]), (
        "only the tests use the openai client: it belongs in the dev extra"
    )


def test_the_constraints_pin_versions_inside_the_declared_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = requirement_names(project["dependencies"])
    lines = (REPO / "constraints.txt").read_text().splitlines()
    pins = requirement_names([line for line in lines if line.strip() and not line.startswith("#")])
    assert pins, "constraints.txt pins nothing"
    for name, pin in pins.items():
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        assert declared[name].specifier.contains(version), f"{name}=={version} is outside {declared[name]}"
        assert "==" not in str(declared[name].specifier), f"{name}: the exact pin belongs in constraints.txt"
