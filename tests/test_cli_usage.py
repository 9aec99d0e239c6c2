"""CLI usage rules that need no daemon: what a command asks for before it calls the admin API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from evolvd.cli import EXIT_INVALID, EXIT_UNREACHABLE, main


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_canary_needs_a_name_to_start_and_none_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLVD_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    started = runner.invoke(main, ["adapters", "canary"])
    assert started.exit_code == EXIT_INVALID and "NAME is required (or --stop" in started.output
    url = f"http://127.0.0.1:{closed_port()}"
    stopped = runner.invoke(main, ["adapters", "canary", "--stop", "--url", url])
    assert stopped.exit_code == EXIT_UNREACHABLE, stopped.output  # it went for DELETE /canary


def test_every_command_speaks_json_and_so_do_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVOLVD_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("kafka:\n  topic: prompts\n")
    bad.write_text("kafka:\n  topic: prompts\n  bootstrap_server: x\n")
    checked = runner.invoke(main, ["config", "check", str(good), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.stdout) == {"file": str(good), "valid": True}
    refused = runner.invoke(main, ["config", "check", str(bad), "--json"])
    assert refused.exit_code == EXIT_INVALID and refused.stdout == ""
    error = json.loads(refused.stderr)
    assert error["exit_code"] == EXIT_INVALID and f"{bad}:3: kafka.bootstrap_server:" in error["errors"][0]
    shown = json.loads(runner.invoke(main, ["config", "show", "--config", str(good), "--json"]).stdout)
    assert shown["kafka"]["topic"] == "prompts"
    initialised = runner.invoke(main, ["policy", "init", str(tmp_path / "policies"), "--json"])
    assert "training.yaml" in json.loads(initialised.stdout)["files"]
    policies = json.loads(
        runner.invoke(main, ["policy", "check", str(tmp_path / "policies"), "--json"]).stdout
    )
    assert set(policies) >= {"safety", "training", "promotion"} and all(
        "hash" in p for p in policies.values()
    )
    unreachable = runner.invoke(
        main, ["jobs", "list", "--json", "--url", f"http://127.0.0.1:{closed_port()}"]
    )
    assert unreachable.exit_code == EXIT_UNREACHABLE
    assert json.loads(unreachable.stderr)["errors"][0].startswith("cannot reach the evolvd admin API")
    # Without --json, the same error is a plain line.
    plain = runner.invoke(main, ["config", "check", str(bad)])
    assert plain.stderr.startswith(f"error: {bad}:3: kafka.bootstrap_server:")


def test_shell_completion_as_the_readme_documents_it() -> None:
    evolvd = str(Path(sys.executable).parent / "evolvd")  # the installed command: completion keys on its name
    env = {**os.environ, "_EVOLVD_COMPLETE": "bash_source"}
    script = subprocess.run([evolvd], env=env, capture_output=True, text=True)
    assert script.returncode == 0 and "_evolvd_completion" in script.stdout
    words = {
        **os.environ,
        "_EVOLVD_COMPLETE": "bash_complete",
        "COMP_WORDS": "evolvd adap",
        "COMP_CWORD": "1",
    }
    offered = subprocess.run([evolvd], env=words, capture_output=True, text=True)
    assert "plain,adapters" in offered.stdout.splitlines()
