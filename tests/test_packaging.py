"""The install itself: the package map is complete, and the CLI stays light."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

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
