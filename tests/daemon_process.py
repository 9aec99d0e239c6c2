"""Run `evolvd run` as a real child process for tests, and talk to it through its admin API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

STARTED: list[DaemonProcess] = []
"""Every daemon a test started; conftest stops those still running after each test, pass or fail."""


class DaemonProcess:
    def __init__(
        self, data_dir: Path, env: dict[str, str], token: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        self.data_dir = data_dir
        self.args = args
        # Serving (a 5 GB vLLM server) only where a test asks for it: test_serving.py does.
        defaults = {
            "EVOLVD_DATA_DIR": str(data_dir),
            "EVOLVD_ADMIN__PORT": "0",
            "EVOLVD_SERVING__ENABLED": "false",
        }
        self.env = {**os.environ, **defaults, **env}
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "daemon.log"
        self.url = ""

    def start(self, wait_ready: bool = True, timeout_s: float = 60.0) -> DaemonProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "admin.url").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            # Its own process group, like a daemon started from a terminal: interrupt_group() is Ctrl-C.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "evolvd.cli", "run", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        STARTED.append(self)
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0, answering: bool = False) -> None:
        """Until /readyz answers 200; `answering`: until it answers at all (a daemon that is up but
        not ready, such as a gateway member nothing was published for yet)."""
        deadline = time.monotonic() + timeout_s
        url_file = self.data_dir / "admin.url"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.tail()}")
            if url_file.exists() and (url := url_file.read_text().strip()):
                self.url = url
                if self.token is None:  # none configured: the one the daemon generated before its URL
                    self.token = (self.data_dir / "admin.token").read_text().strip()
                try:
                    if answering or httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout_s}s:\n{self.tail()}")

    @property
    def auth(self) -> dict[str, str]:
        """The admin API's Authorization header."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def vllm_key(self) -> str:
        """The API key of the vLLM server this daemon uses: the configured one, else the one it
        generated for the server it manages."""
        return self.env.get("EVOLVD_VLLM_API_KEY") or (self.data_dir / "vllm.key").read_text().strip()

    def client_env(self) -> dict[str, str]:
        """The environment of an `evolvd` command run as the daemon's user on its machine: the CLI
        finds the admin URL and token in the daemon's data_dir."""
        return {**os.environ, "EVOLVD_DATA_DIR": str(self.data_dir)}

    def get(self, path: str) -> Any:
        # Generous: on a 2-core machine the vLLM engine and a trainer share the cores with the daemon.
        response = httpx.get(self.url + path, headers=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/status")
        return body

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def interrupt_group(self) -> None:
        """What Ctrl-C in a terminal does: SIGINT to every process of the foreground group."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not exit within {timeout_s}s:\n{self.tail()}") from None

    def kill_if_running(self) -> None:
        """Teardown for a test that failed half-way: stop the daemon and everything it started."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the daemon's own group (its children die with it)
            self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
