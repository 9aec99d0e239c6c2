"""Supervise the serving process: start vLLM, wait for readiness, watch it, restart it with backoff.

In `external` mode there is no process to own: the supervisor only watches the URL, so the gateway
still answers 503 quickly while the server is away.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from evolvd.child_output import ChildOutput
from evolvd.config import ServingConfig
from evolvd.connectors.embedded_broker import free_port
from evolvd.connectors.vllm_client import SERVER_KEEPALIVE_S, VLLMClient
from evolvd.lifeline import child_environment
from evolvd.restart_backoff import RestartBackoff

logger = logging.getLogger("evolvd.serving")

_UNHEALTHY_CHECKS_BEFORE_RESTART = 5
"""A live process that fails this many health checks in a row is presumed hung and restarted."""
STARTUP_PROGRESS_EVERY_S = 10.0
"""How often a waiting start says so (the log, systemd's STATUS and start timeout)."""


class ServingState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    UNAVAILABLE = "unavailable"  # external server not answering
    STOPPED = "stopped"


class ServingStartError(RuntimeError):
    pass


def vllm_command(config: ServingConfig, model_path: Path, served_name: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "evolvd.serving.vllm_entry",
        "--model", str(model_path), "--served-model-name", served_name,
        "--host", config.host, "--port", str(port),
        "--enable-lora", "--max-lora-rank", str(config.max_lora_rank), "--max-loras", str(config.max_loras),
        "--dtype", config.dtype, "--max-model-len", str(config.max_model_len),
        *config.extra_args,
    ]  # fmt: skip


def vllm_environment(config: ServingConfig, runtime_dir: Path, api_key: str | None) -> dict[str, str]:
    """vLLM's caches and temp files go under evolvd's data directory, not ~/.cache and /tmp; its API
    key (evolvd.serving.vllm_key) in VLLM_API_KEY, never on the command line."""
    cache, tmp = runtime_dir / "cache", runtime_dir / "tmp"
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        **child_environment(),
        "VLLM_CPU_KVCACHE_SPACE": str(config.kv_cache_gib),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": str(SERVER_KEEPALIVE_S),
        "VLLM_CACHE_ROOT": str(cache),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **({"VLLM_API_KEY": api_key} if api_key else {}),
    }


class ServingSupervisor:
    """Owns (or watches) the serving process. `on_ready` callbacks run after every (re)start."""

    def __init__(
        self,
        config: ServingConfig,
        runtime_dir: Path,
        model_path: Path,
        served_name: str,
        api_key: str | None = None,
        on_restart: Callable[[], None] | None = None,
        on_waiting: Callable[[str], None] | None = None,
        progress_every_s: float = STARTUP_PROGRESS_EVERY_S,
        output_to_stderr: bool = False,
    ) -> None:
        """`api_key`: the server's API key (evolvd.serving.vllm_key); a managed server is started with it.
        `on_waiting`: told every `progress_every_s` while the first start waits (systemd's STATUS)."""
        self._on_waiting = on_waiting
        self._progress_every_s = progress_every_s
        self._output = ChildOutput("vllm", runtime_dir / "vllm.log", to_stderr=output_to_stderr)
        self.config = config
        self.api_key = api_key
        self.runtime_dir = runtime_dir
        self.model_path = model_path
        self.served_name = served_name
        self.restarts = 0
        self.state = ServingState.STOPPED
        self._on_ready: list[Callable[[], None]] = []
        self._on_restart = on_restart
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._watcher: threading.Thread | None = None
        self.port = config.port or free_port()
        self.url = (
            config.url.rstrip("/")
            if config.mode == "external" and config.url
            else f"http://{config.host}:{self.port}"
        )
        self.client = VLLMClient(self.url, api_key=api_key, health_path=config.health_path)

    @property
    def managed(self) -> bool:
        return self.config.mode == "managed"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def add_ready_callback(self, callback: Callable[[], None]) -> None:
        """Run after each restart (e.g. re-apply the live adapter). Not run for the first start."""
        self._on_ready.append(callback)

    def is_ready(self) -> bool:
        return self._ready.is_set()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or find) the server and wait until it answers; raise ServingStartError if it cannot."""
        self.state = ServingState.STARTING
        if self.managed:
            self._spawn()
        if not self._wait_healthy(self.config.startup_timeout_s):
            self.stop()
            raise ServingStartError(
                f"serving process not ready at {self.url} within {self.config.startup_timeout_s:g}s"
                + (f"; see {self.log_path}" if self.managed else "")
            )
        self._mark_ready()
        self._watcher = threading.Thread(target=self._watch, name="evolvd-serving-watch", daemon=True)
        self._watcher.start()

    @property
    def log_path(self) -> str:
        """Where vLLM's output goes: a rotated file in runtime_dir, or the daemon's stderr."""
        return self._output.where

    def _spawn(self) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        command = vllm_command(self.config, self.model_path, self.served_name, self.port)
        self._output.note(f"=== evolvd starting vLLM: {' '.join(command)}")
        self._proc = subprocess.Popen(
            command,
            env=vllm_environment(self.config, self.runtime_dir, self.api_key),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._output.attach(self._proc.stdout)
        logger.info("started vLLM (pid %d) on %s; log %s", self._proc.pid, self.url, self.log_path)

    def _wait_healthy(self, timeout_s: float) -> bool:
        started = time.monotonic()
        deadline, next_progress = started + timeout_s, started + self._progress_every_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._proc is not None and self._proc.poll() is not None:
                logger.error(
                    "vLLM exited with code %s while starting; see %s", self._proc.returncode, self.log_path
                )
                return False
            if self.client.healthy():
                return True
            if time.monotonic() >= next_progress:
                next_progress += self._progress_every_s
                self._report_waiting(time.monotonic() - started, timeout_s)
            self._stop.wait(0.5)
        return False

    def _report_waiting(self, waited_s: float, timeout_s: float) -> None:
        where = f"log at {self.log_path}" if self.managed else self.url
        waiting = f"waiting for vLLM ({waited_s:.0f} s of {timeout_s:.0f} s, {where})"
        logger.info("%s", waiting)
        if self._on_waiting is not None:
            self._on_waiting(waiting)

    def _mark_ready(self) -> None:
        self.state = ServingState.READY
        self._ready.set()
        logger.info("serving ready at %s", self.url)

    def _mark_down(self, state: ServingState) -> None:
        self._ready.clear()
        self.state = state

    def _watch(self) -> None:
        backoff = RestartBackoff(1.0, self.config.restart_backoff_max_s, healthy_after_s=float("inf"))
        failed_checks = 0
        while not self._stop.wait(self.config.health_interval_s):
            exited = self._proc is not None and self._proc.poll() is not None
            healthy = not exited and self.client.healthy()
            if healthy:
                failed_checks = 0
                backoff.healthy()
                if not self._ready.is_set():  # an external server came back
                    self._mark_ready()
                    self._run_ready_callbacks()
                continue
            failed_checks += 1
            if not self.managed:
                if self._ready.is_set():
                    logger.error("external serving at %s stopped answering", self.url)
                self._mark_down(ServingState.UNAVAILABLE)
                continue
            if not exited and failed_checks < _UNHEALTHY_CHECKS_BEFORE_RESTART:
                continue
            self._mark_down(ServingState.RESTARTING)
            reason = (
                f"exited with code {self._proc.returncode}" if exited and self._proc else "stopped answering"
            )
            self.restarts += 1
            if self._on_restart is not None:
                self._on_restart()
            delay = backoff.next_delay()
            logger.error("vLLM %s; restarting in %.0fs (restart %d)", reason, delay, self.restarts)
            self._kill_group()
            if self._stop.wait(delay):
                return
            self._spawn()
            if self._wait_healthy(self.config.startup_timeout_s):
                failed_checks = 0
                self._mark_ready()
                self._run_ready_callbacks()

    def _run_ready_callbacks(self) -> None:
        for callback in self._on_ready:
            try:
                callback()
            except Exception:
                logger.exception("after-restart step failed; serving goes on without it")

    def _kill_group(self, timeout_s: float = 20.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        # vLLM's engine workers share the group; make sure none outlives the server.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        self._mark_down(ServingState.STOPPED)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)
        if self.managed:
            self._kill_group()
        self.client.close()
        self._output.close()
