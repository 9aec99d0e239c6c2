"""A real single-node Ray cluster for tests, reachable only through loopback.

Ray binds some of its ports to every interface and advertises the machine's address, whatever
--node-ip-address says, so the head runs in a network namespace of its own (`unshare -n`, only its
loopback up): nothing of it is reachable from outside. Its job API (the dashboard's HTTP port) is
the one way in: a bridge inside the namespace forwards a Unix socket in the test's folder to it, and
a bridge outside forwards a loopback port of this machine to that socket, as `kubectl port-forward`
would to a head in a cluster. The trainer jobs it runs share this machine's files, as the nodes of a
real cluster share data_dir.

Stopped by the PIDs of the namespace's own processes (every process in it was started here).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from evolvd.connectors.embedded_broker import free_port

BRIDGE = Path(__file__).with_name("unix_bridge.py")
DASHBOARD_PORT = 8265


def namespaces_available() -> str | None:
    """None when this machine lets the tests make a network namespace; else why not."""
    try:
        done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare is not available: {exc}"
    return None if done.returncode == 0 else f"unshare -rn failed: {done.stderr.strip()}"


class RayCluster:
    def __init__(self, folder: Path) -> None:
        """`folder`: the head's log. Ray's own files go to a short temporary folder: its Unix sockets'
        paths must fit in 107 bytes."""
        self.folder = folder
        self._short = Path(tempfile.mkdtemp(prefix="ray-"))
        self.socket = self._short / "dashboard.sock"
        self.port = free_port()
        self.address = f"http://127.0.0.1:{self.port}"
        self._inside: subprocess.Popen[bytes] | None = None
        self._bridge: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120) -> RayCluster:
        bin_dir = Path(sys.executable).parent
        inside = "; ".join(
            [
                "set -e",
                "ip link set lo up",
                f"{shlex.quote(sys.executable)} {shlex.quote(str(BRIDGE))} unix-to-tcp"
                f" {shlex.quote(str(self.socket))} 127.0.0.1 {DASHBOARD_PORT} &"
                # `exec` keeps the head's PID the namespace's first: the teardown finds the rest by it.
                f" exec {shlex.quote(str(bin_dir / 'ray'))} start --head --block --node-ip-address=127.0.0.1"
                f" --dashboard-host=127.0.0.1 --dashboard-port={DASHBOARD_PORT} --num-cpus=2"
                f" --temp-dir={shlex.quote(str(self._short / 'ray'))} --disable-usage-stats",
            ]
        )
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        with open(self.folder / "ray.log", "wb") as log:
            command = ["unshare", "-rn", "bash", "-c", inside]
            self._inside = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
        self._bridge = subprocess.Popen(
            [sys.executable, str(BRIDGE), "tcp-to-unix", "127.0.0.1", str(self.port), str(self.socket)],
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._inside.poll() is not None:
                self.stop()
                raise RuntimeError(f"the Ray head exited:\n{(self.folder / 'ray.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.address}/api/version", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"no Ray job API within {timeout_s:.0f} s; see {self.folder / 'ray.log'}")

    def _namespace_pids(self) -> list[int]:
        """Every process in the head's network namespace: all started by this cluster."""
        assert self._inside is not None
        try:
            ours = os.readlink(f"/proc/{self._inside.pid}/ns/net")
        except OSError:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "ns" / "net") == ours:
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def stop(self) -> None:
        if self._inside is not None:
            for pid in self._namespace_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._inside.wait(timeout=30)
        if self._bridge is not None:
            self._bridge.kill()
            self._bridge.wait(timeout=30)
        shutil.rmtree(self._short, ignore_errors=True)
