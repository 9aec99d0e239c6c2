"""Children's output (vLLM, the embedded broker) stays bounded on disk, or goes to the daemon's stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evolvd.child_output import ChildOutput

# About 3 MB of lines, written by a real child process as fast as it can.
NOISY = "import sys\nfor i in range(30_000): sys.stdout.write(f'line {i:06d} ' + 'x' * 90 + '\\n')"


def run_child(output: ChildOutput) -> None:
    proc = subprocess.Popen([sys.executable, "-c", NOISY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    pump = output.attach(proc.stdout)
    assert proc.wait(timeout=60) == 0
    pump.join(timeout=60)
    assert not pump.is_alive()


def test_a_noisy_child_fills_rotated_files_of_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "vllm.log"
    output = ChildOutput("vllm", path, max_bytes=256 * 1024, backups=2)
    output.note("=== evolvd starting vLLM: ...")
    run_child(output)
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["vllm.log", "vllm.log.1", "vllm.log.2"], "two old files kept, no more"
    assert all(f.stat().st_size <= 256 * 1024 for f in files)
    assert path.read_text().splitlines()[-1].startswith("line 029999 "), "the newest lines are in the file"
    assert output.where == str(path)


def test_on_stderr_every_line_carries_the_childs_name(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    output = ChildOutput("broker", tmp_path / "broker.log", to_stderr=True)
    run_child(output)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 30_000 and all(line.startswith("[broker] line ") for line in lines)
    assert not (tmp_path / "broker.log").exists() and output.where == "the daemon's stderr"
