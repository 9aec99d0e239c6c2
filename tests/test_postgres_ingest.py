"""Several ingest members on one shared PostgreSQL buffer: real `evolvd run --role ingest` processes in
one consumer group on the session's broker, writing the session's PostgreSQL server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import produce, prompt_message, wait_for
from postgres_server import stored_events as stored

from evolvd.config import KafkaConfig
from evolvd.connectors.kafka_source import ensure_topic

pytestmark = [pytest.mark.kafka]

PARTITIONS = 4


def member_env(broker: Any, topic: str, group: str, postgres_url: str) -> dict[str, str]:
    return {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": group,
        "EVOLVD_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": postgres_url,
        # Small polls: each member commits many transactions, so the kill lands mid-stream.
        "EVOLVD_INGEST__BATCH_MAX_MESSAGES": "10",
    }


def assigned(member: DaemonProcess) -> set[int]:
    return {p["partition"] for p in member.status()["ingest"]["partitions"]}


def test_two_members_store_every_event_once_through_a_kill_9(
    broker: Any, postgres_url: str, tmp_path: Path
) -> None:
    n = 20_000
    topic, group = f"pg-{uuid.uuid4().hex[:10]}", f"g-{uuid.uuid4().hex}"
    ensure_topic(
        KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic),
        broker.bootstrap_servers,
        PARTITIONS,
    )
    env = member_env(broker, topic, group, postgres_url)
    first = DaemonProcess(tmp_path / "a", env, args=("--role", "ingest")).start()
    second = DaemonProcess(tmp_path / "b", env, args=("--role", "ingest")).start()
    # Both in the group, the partitions split between them, before any message arrives.
    wait_for(lambda: assigned(second) and assigned(first) and not assigned(first) & assigned(second),
             "the group to split the partitions", 60)  # fmt: skip
    status = first.status()
    assert status["buffer"]["path"] == postgres_url and status["loop"] is None and status["policies"] is None

    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(n)])
    wait_for(lambda: stored(postgres_url)[0] >= n // 4, "a quarter of the stream", 120)
    second.kill()  # kill -9, mid-stream
    at_kill = stored(postgres_url)[0]
    assert at_kill < n, "the stream was stored before the kill: the test proves too little"

    # The survivor takes the dead member's partitions after its session times out, from the buffer's
    # offsets: every message once, the dead member's last uncommitted batch read again and kept once.
    wait_for(lambda: assigned(first) == set(range(PARTITIONS)), "the survivor to take every partition", 60)
    wait_for(lambda: stored(postgres_url)[0] >= n, "every event", 180)
    restarted = DaemonProcess(tmp_path / "b", env, args=("--role", "ingest")).start()
    more = [prompt_message(i) for i in range(n, n + 1_000)]
    produce(broker.bootstrap_servers, topic, more)
    wait_for(lambda: stored(postgres_url)[0] >= n + 1_000, "the messages sent after the restart", 120)
    time.sleep(1.0)
    assert first.stop() == 0, first.tail()
    assert restarted.stop() == 0, restarted.tail()

    assert stored(postgres_url) == (n + 1_000, n + 1_000)
    with psycopg.connect(postgres_url) as con:
        ids = {r[0] for r in con.execute(b"SELECT id FROM events").fetchall()}
        rows = con.execute(b"SELECT kafka_partition, next_offset FROM kafka_offsets").fetchall()
    offsets = {int(partition): int(offset) for partition, offset in rows}
    assert ids == {f"msg-{i:06d}" for i in range(n + 1_000)}
    assert sum(offsets.values()) == n + 1_000  # every partition's position is its end: nothing re-read later
