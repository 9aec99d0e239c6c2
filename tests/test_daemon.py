"""The daemon as operators run it: a real `evolvd run` process, real broker, real DuckDB file."""

from __future__ import annotations

import random
import signal
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from daemon_process import DaemonProcess
from helpers import produce, prompt_message, run_cli, wait_for

from evolvd.cli import EXIT_FORCED, EXIT_STARTUP_FAILED

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def external_broker_env(broker: Any, topic: str, **extra: str) -> dict[str, str]:
    return {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": f"g-{uuid.uuid4().hex}",
        "EVOLVD_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "EVOLVD_INGEST__BACKLOG_CHECK_INTERVAL_S": "0.2",
        **extra,
    }


def buffer_events(data_dir: Path) -> tuple[int, int, list[str]]:
    con = duckdb.connect(str(data_dir / "buffer.duckdb"), read_only=True)
    try:
        total, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
        ids = [r[0] for r in con.execute("SELECT id FROM events").fetchall()]
    finally:
        con.close()
    return int(total), int(distinct), ids


def process_gone(pid: int) -> bool:
    """Exited (a zombie waiting for its reaper counts: it runs no code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_sigkill_during_ingest_loses_and_duplicates_nothing(broker: Any, topic: str, tmp_path: Path) -> None:
    n = 20_000
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(n)])
    # Small polls make each life of the daemon commit many transactions, so kills land mid-ingest.
    env = external_broker_env(broker, topic, EVOLVD_INGEST__BATCH_MAX_MESSAGES="25")
    daemon = DaemonProcess(tmp_path / "data", env)
    rng = random.Random(20261121)
    kills_mid_ingest, seen = 0, 0
    fetchers: list[int] = []  # each life's Kafka fetcher process (ingest.fetcher: process)
    for _ in range(6):
        daemon.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until this life has written something
            now = daemon.status()["buffer"]["tables"]["events"]
            if now > seen or now == n:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.1))
        status = daemon.status()
        before_kill = status["buffer"]["tables"]["events"]
        fetchers.append(status["ingest"]["fetcher_pid"])
        daemon.kill()
        if before_kill >= n:
            break
        kills_mid_ingest += 1
        seen = before_kill
    assert kills_mid_ingest >= 3, (
        f"only {kills_mid_ingest} kills landed mid-ingest; the test proves too little"
    )
    # A killed daemon's fetcher notices and leaves the group by itself: no orphan keeps consuming.
    assert all(isinstance(pid, int) for pid in fetchers), fetchers
    deadline = time.monotonic() + 30
    while not all(map(process_gone, fetchers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(map(process_gone, fetchers)), [p for p in fetchers if not process_gone(p)]

    daemon.start()
    deadline = time.monotonic() + 120
    while daemon.status()["buffer"]["tables"]["events"] < n and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    assert daemon.stop() == 0, daemon.tail()
    total, distinct, ids = buffer_events(tmp_path / "data")
    assert (total, distinct) == (n, n)
    assert set(ids) == {f"msg-{i:06d}" for i in range(n)}


def test_sigterm_finishes_the_batch_and_exits_cleanly(broker: Any, topic: str, tmp_path: Path) -> None:
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(5000)])
    daemon = DaemonProcess(tmp_path / "data", external_broker_env(broker, topic)).start()
    time.sleep(0.3)
    assert daemon.stop() == 0, daemon.tail()
    log = daemon.tail(200)
    assert "every polled message is in the buffer" in log
    assert "evolvd stopped" in log
    assert not (tmp_path / "data" / "admin.url").exists()
    # Whatever it had reached is consistent: offsets cover exactly the events stored.
    con = duckdb.connect(str(tmp_path / "data" / "buffer.duckdb"), read_only=True)
    events = con.execute("SELECT count(*) FROM events").fetchone()
    offsets = con.execute("SELECT coalesce(sum(next_offset), 0) FROM kafka_offsets").fetchone()
    con.close()
    assert events == offsets


def test_embedded_defaults_produce_status_and_ctrl_c(tmp_path: Path) -> None:
    """What `make run` does: the bundled broker, `evolvd produce` and `evolvd status` against it."""
    data = tmp_path / "data"
    daemon = DaemonProcess(data, {}).start()
    status = daemon.status()
    assert status["kafka"]["embedded"] is True
    host, port = status["kafka"]["bootstrap_servers"].split(":")
    assert host == "127.0.0.1"

    lines = tmp_path / "prompts.jsonl"
    # With the poison pills that stopped ingest (and `evolvd produce` itself): nested 1,000 deep,
    # and a timestamp the buffer cannot store.
    poison = '{"id": "deep", "prompt": "p", "metadata": ' + "[" * 1000 + "]" * 1000 + "}\n"
    poison += '{"id": "late", "prompt": "p", "ts": 1e20}\n'
    lines.write_text(
        "".join(f'{{"id": "p{i}", "prompt": "What is {i} + {i}?"}}\n' for i in range(50)) + "oops\n" + poison
    )
    produced = run_cli("produce", str(lines), env=daemon.env)
    assert produced.returncode == 0, produced.stderr
    assert "published 53 messages" in produced.stdout

    deadline = time.monotonic() + 30
    while (
        daemon.status()["buffer"]["tables"]["events"] < 50 or daemon.status()["dead_letters"]["total"] < 3
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    shown = run_cli("status", env=daemon.env)
    assert shown.returncode == 0, shown.stderr
    assert "events=50" in shown.stdout
    assert "dead letters 3: " in shown.stdout
    for reason in ("not_json=1", "too_deep=1", "bad_timestamp=1"):
        assert reason in shown.stdout
    ingest = daemon.status()["ingest"]
    assert ingest["restarts"] == 0 and ingest["last_error"] is None
    assert ingest["writer"] == {"failing_s": 0.0, "attempts": 0, "last_error": None}  # no batch was refused

    daemon.interrupt_group()  # Ctrl-C: the broker must not die before the daemon has closed its consumer
    assert daemon.wait(60) == 0, daemon.tail()
    assert " ERROR " not in daemon.log.read_text(), daemon.tail()
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=1):
        pass  # the embedded broker went down with the daemon


def test_a_killed_daemon_takes_its_embedded_broker_with_it(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "data", {}).start()
    host, port = daemon.status()["kafka"]["bootstrap_servers"].split(":")
    daemon.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=0.5).close()
        except OSError:
            return  # gone
        time.sleep(0.1)
    raise AssertionError("the embedded broker outlived a daemon killed with -9")


def test_a_second_ctrl_c_forces_the_exit(tmp_path: Path) -> None:
    # Nothing listens on port 9: startup hangs waiting for Kafka, and the second Ctrl-C ends that.
    env = {"EVOLVD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9", "EVOLVD_KAFKA__CONNECT_TIMEOUT_S": "120"}
    daemon = DaemonProcess(tmp_path / "data", env).start(wait_ready=False)
    # Once its handlers are in place (building the parts takes seconds, more on a busy machine).
    wait_for(lambda: "a second Ctrl-C exits at once" in daemon.log.read_text(), "the handlers", 120, 0.2)
    daemon.signal(signal.SIGINT)
    time.sleep(0.5)
    daemon.signal(signal.SIGINT)
    assert daemon.wait(15) == EXIT_FORCED
    assert "second interrupt" in daemon.tail()


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"EVOLVD_ADMIN__HOST": "0.0.0.0"}, "admin.host 0.0.0.0 is not a loopback address"),
        (
            {"EVOLVD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9", "EVOLVD_KAFKA__CONNECT_TIMEOUT_S": "2"},
            "no Kafka broker answered at 127.0.0.1:9",
        ),
        ({"EVOLVD_ADMIN__TOKEN_FILE": "/nonexistent/token"}, "cannot read admin.token_file"),
        (
            {"EVOLVD_SERVING__ENABLED": "true", "EVOLVD_GATEWAY__HOST": "0.0.0.0"},
            "gateway.host 0.0.0.0 is not a loopback address: set client API keys",
        ),
    ],
)
def test_a_failed_startup_exits_with_its_own_code_and_one_line(
    tmp_path: Path, env: dict[str, str], reason: str
) -> None:
    daemon = DaemonProcess(tmp_path / "data", {**env, "EVOLVD_ADMIN_TOKEN": ""}).start(wait_ready=False)
    assert daemon.wait(60) == EXIT_STARTUP_FAILED
    log = daemon.log.read_text()
    failure = [line for line in log.splitlines() if "startup failed" in line]
    assert len(failure) == 1 and reason in failure[0], log
    assert "leaked" not in log


def test_a_second_daemon_on_the_same_buffer_refuses_to_start(broker: Any, topic: str, tmp_path: Path) -> None:
    env = external_broker_env(broker, topic)
    first = DaemonProcess(tmp_path / "data", env).start()
    second = DaemonProcess(tmp_path / "data", env)
    second.log = tmp_path / "second.log"
    second.start(wait_ready=False)
    try:
        assert second.wait(60) == EXIT_STARTUP_FAILED
        assert "is open in another process" in second.tail()
    finally:
        assert first.stop() == 0


def test_token_protects_status_and_metrics_but_not_probes(broker: Any, topic: str, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    env = external_broker_env(broker, topic, EVOLVD_ADMIN_TOKEN=token)
    daemon = DaemonProcess(tmp_path / "data", env, token=token).start()
    try:
        assert httpx.get(daemon.url + "/status").status_code == 401
        assert (
            httpx.get(daemon.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert httpx.get(daemon.url + "/healthz").status_code == 200
        assert daemon.status()["state"] == "running"
        metrics = httpx.get(daemon.url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
        assert 'evolvd_buffer_rows{table="events"}' in metrics
        assert "evolvd_build_info" in metrics
    finally:
        assert daemon.stop() == 0


def test_without_a_configured_token_the_daemon_makes_one_only_its_user_can_read(
    broker: Any, topic: str, tmp_path: Path
) -> None:
    env = external_broker_env(broker, topic, EVOLVD_ADMIN_TOKEN="")
    daemon = DaemonProcess(tmp_path / "data", env).start()
    token_file = daemon.data_dir / "admin.token"
    try:
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert httpx.get(daemon.url + "/status").status_code == 401, "loopback is no excuse"
        assert daemon.status()["state"] == "running"  # with the token from the file
        assert run_cli("status", env=daemon.env).returncode == 0, "the CLI reads the same file"
        elsewhere = run_cli(
            "status", "--url", daemon.url, env={**daemon.env, "EVOLVD_DATA_DIR": str(tmp_path)}
        )
        assert elsewhere.returncode == 1 and "refused the bearer token" in elsewhere.stderr
        first = token_file.read_text()
    finally:
        assert daemon.stop() == 0
    restarted = DaemonProcess(tmp_path / "data", env).start()
    try:
        assert token_file.read_text() == first, "a restart keeps the token its clients hold"
    finally:
        assert restarted.stop() == 0
    token_file.chmod(0o644)
    exposed = DaemonProcess(tmp_path / "data", env).start(wait_ready=False)
    assert exposed.wait(60) == EXIT_STARTUP_FAILED
    assert "is readable by other users (mode 644)" in exposed.tail()


def test_under_systemd_it_notifies_ready_pings_the_watchdog_and_says_stopping(
    broker: Any, topic: str, tmp_path: Path
) -> None:
    """deploy/systemd/evolvd.service is Type=notify with WatchdogSec: the daemon must speak sd_notify.
    A real datagram socket stands in for systemd's notify socket."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.settimeout(30)
        env = external_broker_env(broker, topic, NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000")
        daemon = DaemonProcess(tmp_path / "data", env).start()

        def next_message() -> set[str]:
            return set(manager.recv(4096).decode().splitlines())

        got: list[set[str]] = []
        while not any("WATCHDOG=1" in m for m in got):  # bounded by the socket timeout
            got.append(next_message())
        assert "READY=1" in got[0]  # readiness comes first, with a status line
        assert any(line.startswith("STATUS=") for line in got[0])
        assert daemon.stop() == 0, daemon.tail()
        while "STOPPING=1" not in (last := next_message()):
            assert "READY=1" not in last
