"""sd_notify against real datagram sockets (the daemon-level check is in test_daemon.py)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

from evolvd.config import ServingConfig
from evolvd.serving.supervisor import ServingStartError, ServingSupervisor
from evolvd.systemd import SystemdNotifier


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().splitlines()


def test_messages_reach_a_path_socket_and_an_abstract_one(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    abstract = f"evolvd-test-{uuid.uuid4().hex}"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as on_path,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as in_namespace,
    ):
        on_path.bind(path)
        in_namespace.bind("\0" + abstract)
        on_path.settimeout(5)
        in_namespace.settimeout(5)
        SystemdNotifier({"NOTIFY_SOCKET": path}).ready("started")
        assert receive(on_path) == ["READY=1", "STATUS=started"]
        SystemdNotifier({"NOTIFY_SOCKET": "@" + abstract}).stopping()
        assert receive(in_namespace) == ["STOPPING=1", "STATUS=stopping"]


def test_watchdog_pings_at_half_the_interval_and_only_for_this_process(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        manager.settimeout(0.5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
        notifier.watchdog()
        notifier.watchdog()  # 30 s not yet passed: no second ping
        assert receive(manager) == ["WATCHDOG=1"]
        try:
            extra = receive(manager)
        except TimeoutError:
            extra = []
        assert extra == []
        # WATCHDOG_PID names another process (a child that inherited the environment): no pings.
        other = SystemdNotifier(
            {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1", "WATCHDOG_PID": str(os.getpid() + 1)}
        )
        other.watchdog()
        try:
            stray = receive(manager)
        except TimeoutError:
            stray = []
        assert stray == []


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready("started")  # no socket, no error
    notifier.watchdog()


def test_a_slow_vllm_start_extends_systemds_start_timeout_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        manager.settimeout(5)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
        # A server that never answers (a closed port), so the start waits out its timeout.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"
        config = ServingConfig(mode="external", url=url, startup_timeout_s=2.5)
        supervisor = ServingSupervisor(
            config,
            tmp_path,
            tmp_path,
            "m",
            on_waiting=lambda waiting: notifier.extend_start(waiting, 30),
            progress_every_s=1.0,
        )
        with caplog.at_level(logging.INFO, logger="evolvd.serving"), pytest.raises(ServingStartError):
            supervisor.start()
        first = receive(manager)
        assert first[0].startswith("STATUS=waiting for vLLM (1 s of 2 s") and url in first[0]
        assert first[1] == "EXTEND_TIMEOUT_USEC=30000000"
        assert receive(manager)[0].startswith("STATUS=waiting for vLLM (2 s of 2 s")
    assert sum("waiting for vLLM" in r.getMessage() for r in caplog.records) == 2
