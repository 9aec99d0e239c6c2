"""CLI usage rules that need no daemon: what a command asks for before it calls the admin API."""

from __future__ import annotations

import socket
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
