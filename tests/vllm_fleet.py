"""A real serving fleet for tests and bench/serving.py: vLLM replicas sharing one adapter directory
through vLLM's filesystem LoRA resolver, behind vllm-router (PyPI), all on loopback.

This is what an operator runs and points the daemon at in `serving.mode: external` with
`serving.adapter_dir` and `serving.replica_urls` (deploy/README.md). Each replica is the daemon's own
vLLM launcher (evolvd.serving.vllm_entry: it dies with the process that started it) with the
resolver's two variables set. Stopped by the PIDs started here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx

from evolvd.config import ServingConfig
from evolvd.connectors.embedded_broker import free_port
from evolvd.serving.supervisor import vllm_command, vllm_environment


def resolver_environment(adapter_dir: Path) -> dict[str, str]:
    """The variables that make a vLLM replica serve adapters from `adapter_dir` by name."""
    return {"VLLM_PLUGINS": "lora_filesystem_resolver", "VLLM_LORA_RESOLVER_CACHE_DIR": str(adapter_dir)}


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


class Replica:
    def __init__(
        self, folder: Path, base_model: Path, served_name: str, adapter_dir: Path, core: int
    ) -> None:
        """`core`: the CPU its compute threads are bound to. vLLM's CPU backend binds a lone server's to
        core 0 by default, so two replicas left to that default would both compute on core 0."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = ServingConfig(kv_cache_gib=1, max_model_len=1024)
        self._command = vllm_command(config, base_model, served_name, port)
        folder.mkdir(parents=True, exist_ok=True)
        # vLLM's Unix sockets live under TMPDIR and their paths must fit in 107 bytes: a short folder.
        self.runtime = Path(tempfile.mkdtemp(prefix="evolvd-replica-"))
        self._env = {
            **vllm_environment(config, self.runtime, None),
            **resolver_environment(adapter_dir),
            "VLLM_CPU_OMP_THREADS_BIND": str(core),
        }
        self.log = folder / "vllm.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def launch(self) -> None:
        self._log_file = self.log.open("ab")
        # A session of its own: its engine-core and worker processes go with it (a -9 of the API server
        # alone leaves them running, holding GBs).
        self.proc = subprocess.Popen(
            self._command,
            env=self._env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 420) -> None:
        assert self.proc is not None
        wait_healthy(self.url, self.proc, self.log, timeout_s)

    def kill(self) -> None:
        """-9 to the replica's whole process group (the API server, its engine core and workers)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
        if self._log_file is not None:
            self._log_file.close()


class Router:
    def __init__(self, folder: Path, worker_urls: list[str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "router.log"
        self._log_file = self.log.open("ab")
        bin_dir = Path(sys.executable).parent
        # round_robin: the fleet's traffic reaches every replica, so a swap that missed one would show.
        # Retries and health checks let it route around a replica that is restarting.
        command = [
            str(bin_dir / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *worker_urls, "--policy", "round_robin",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--worker-startup-check-interval", "1", "--health-check-interval-secs", "2",
            "--log-level", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"}
        )

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_healthy(self.url, self.proc, self.log, timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log_file.close()


class VLLMFleet:
    """`replicas` vLLM servers over one adapter directory, and a router in front of them."""

    def __init__(self, folder: Path, base_model: Path, served_name: str, replicas: int = 2) -> None:
        self.folder = folder
        self.adapter_dir = folder / "adapters"
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        self.replicas = [
            Replica(
                folder / f"replica-{i}", base_model, served_name, self.adapter_dir, i % (os.cpu_count() or 1)
            )
            for i in range(replicas)
        ]
        self.router: Router | None = None
        self._router_port = free_port()

    @property
    def replica_urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def url(self) -> str:
        """The router's URL (known before it starts: clients may be configured with it first)."""
        return f"http://127.0.0.1:{self._router_port}"

    def start(self) -> VLLMFleet:
        try:
            for replica in self.replicas:  # all loading at once: the start is the slowest one's
                replica.launch()
            for replica in self.replicas:
                replica.wait_ready()
            self.router = Router(self.folder, self.replica_urls, self._router_port)
            self.router.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def restart_replica(self, index: int) -> None:
        """Kill one replica (-9, as a node failure would) and start it again; returns when it is healthy."""
        replica = self.replicas[index]
        replica.kill()
        replica.launch()
        replica.wait_ready()

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        for replica in self.replicas:
            replica.kill()
            shutil.rmtree(replica.runtime, ignore_errors=True)
