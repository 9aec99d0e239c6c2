"""Ingest against the real embedded broker and a real DuckDB file: the loop the daemon runs, with its
Kafka consumer in a child process (`ingest.fetcher: process`, the default) or in-process (`thread`)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import produce, prompt_message

from evolvd.abc import Source
from evolvd.buffer import DuckDBBuffer
from evolvd.config import FetcherKind, IngestConfig, KafkaConfig
from evolvd.connectors.group_offsets import GroupOffsetsCheck, partitions_ahead
from evolvd.connectors.kafka_process import FetcherExitedError, open_kafka_source
from evolvd.ingest import IngestLoop
from evolvd.metrics import IngestMetrics, new_registry

pytestmark = pytest.mark.kafka


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(params=["process", "thread"])
def fetcher(request: pytest.FixtureRequest) -> FetcherKind:
    kind: FetcherKind = request.param
    return kind


def new_source(
    fetcher: FetcherKind,
    kafka: KafkaConfig,
    bootstrap: str,
    buffer: DuckDBBuffer,
    drain: Callable[[], None],
    max_poll_records: int = 500,
) -> Source:
    """The source the daemon builds for `ingest.fetcher` (it passes ingest.batch_max_messages)."""
    return open_kafka_source(
        fetcher, kafka, bootstrap, lambda: buffer.stored_offsets(kafka.topic), drain, max_poll_records
    )


@contextmanager
def running_ingest(
    bootstrap: str,
    topic: str,
    buffer: DuckDBBuffer,
    fetcher: FetcherKind,
    group: str | None = None,
    errors: list[BaseException] | None = None,
    **ingest: Any,
) -> Iterator[IngestLoop]:
    """The loop on its own thread; what it raises goes to `errors` (or fails the test)."""
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic=topic, group_id=group or f"g-{uuid.uuid4().hex}")
    config = IngestConfig(**{"backlog_check_interval_s": 0.1, "batch_max_messages": 500, **ingest})
    loop = IngestLoop(
        lambda drain: new_source(fetcher, kafka, bootstrap, buffer, drain, config.batch_max_messages),
        buffer,
        config,
        IngestMetrics.create(new_registry()),
        GroupOffsetsCheck(kafka, bootstrap, lambda: buffer.stored_offsets(topic)),
    )
    stop = threading.Event()
    raised: list[BaseException] = [] if errors is None else errors

    def run() -> None:
        try:
            loop.run(stop)
        except Exception as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield loop
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "ingest loop did not stop"
        if errors is None:
            assert not raised, raised


def count(buffer: DuckDBBuffer, table: str = "events") -> int:
    return buffer.table_counts()[table]


def test_n_messages_land_as_exactly_n_events(
    broker: Any, topic: str, tmp_path: Path, fetcher: FetcherKind
) -> None:
    n = 3000
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(n)])
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    with running_ingest(broker.bootstrap_servers, topic, buffer, fetcher):
        wait_for(lambda: count(buffer) >= n, what=f"{n} events")
        time.sleep(0.5)  # anything extra would show up now
    assert count(buffer) == n
    assert buffer.cursor().execute("SELECT count(DISTINCT id) FROM events").fetchone() == (n,)
    assert sum(buffer.stored_offsets(topic).values()) == n
    buffer.close()


def test_bad_messages_become_dead_letters_and_never_block_the_partition(
    broker: Any, topic: str, tmp_path: Path, fetcher: FetcherKind
) -> None:
    bad = [
        (None, "no_value"),
        (b"x" * 5000, "oversized"),
        (b'{"id": "u", "prompt": "caf\xe9"}', "not_utf8"),
        (b"{{{{", "not_json"),
        (b"[1]", "not_object"),
        (b'{"id": 7, "prompt": "p"}', "wrong_type"),
        (b'{"id": "e", "prompt": ""}', "empty_prompt"),
        (b'{"id": "n"}', "no_prompt"),
        (b'{"id": "m", "prompt": "p", "messages": [{"role": "user", "content": "q"}]}', "ambiguous_prompt"),
        # Poison pills that stopped every partition: nested 1,000 deep (2 KB), and timestamps the
        # buffer cannot store (each failed its whole batch, retried forever).
        (b'{"id": "d", "prompt": "p", "metadata": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}", "too_deep"),
        (b'{"id": "ts1", "prompt": "p", "ts": 1e20}', "bad_timestamp"),
        (b'{"id": "ts2", "prompt": "p", "ts": -1e15}', "bad_timestamp"),
    ]
    values: list[bytes | None] = []
    for i, (value, _reason) in enumerate(bad):  # good, bad, good, bad, ... all on one partition
        values.append(prompt_message(i))
        values.append(value)
    values.append(prompt_message(len(bad)))
    produce(broker.bootstrap_servers, topic, values, partition=0)

    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    with running_ingest(broker.bootstrap_servers, topic, buffer, fetcher, max_message_bytes=4096):
        wait_for(lambda: count(buffer) == len(bad) + 1 and count(buffer, "dead_letters") == len(bad))
    rows = (
        buffer.cursor()
        .execute("SELECT kafka_offset, reason, detail FROM dead_letters ORDER BY kafka_offset")
        .fetchall()
    )
    assert [(off, reason) for off, reason, _ in rows] == [(2 * i + 1, r) for i, (_, r) in enumerate(bad)]
    assert all(detail for _, _, detail in rows)
    assert buffer.stored_offsets(topic) == {0: len(values)}
    buffer.close()


def test_restart_resumes_from_buffer_offsets_without_duplicates(
    broker: Any, topic: str, tmp_path: Path, fetcher: FetcherKind
) -> None:
    path = tmp_path / "b.duckdb"
    group = f"g-{uuid.uuid4().hex}"
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(1000)])
    buffer = DuckDBBuffer(path)
    with running_ingest(broker.bootstrap_servers, topic, buffer, fetcher, group=group):
        wait_for(lambda: count(buffer) == 1000)
    buffer.close()

    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(1000, 1500)])
    buffer = DuckDBBuffer(path)
    # A different group id: Kafka's committed offsets are irrelevant, the buffer's are what count.
    with running_ingest(broker.bootstrap_servers, topic, buffer, fetcher):
        wait_for(lambda: count(buffer) == 1500)
        time.sleep(0.5)
    assert count(buffer) == 1500
    buffer.close()


def test_republished_ids_are_deduplicated(
    broker: Any, topic: str, tmp_path: Path, fetcher: FetcherKind
) -> None:
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(100)] * 2)
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    with running_ingest(broker.bootstrap_servers, topic, buffer, fetcher) as loop:
        duplicates = loop._metrics.messages.labels("duplicate")
        wait_for(lambda: sum(buffer.stored_offsets(topic).values()) == 200)
        # The counter moves just after the batch's transaction commits its offsets: wait for it,
        # then require the exact count (a wrong count never settles at 100 and times out).
        wait_for(lambda: duplicates._value.get() >= 100)
        registry_value = duplicates._value.get()
    assert count(buffer) == 100
    assert registry_value == 100
    buffer.close()


def test_backpressure_pauses_above_the_limit_and_resumes_below(
    broker: Any, topic: str, tmp_path: Path, fetcher: FetcherKind
) -> None:
    high, low = 300, 100
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(2000)])
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    with running_ingest(
        broker.bootstrap_servers,
        topic,
        buffer,
        fetcher,
        batch_max_messages=50,
        backlog_high_watermark=high,
        backlog_low_watermark=low,
    ) as loop:
        wait_for(lambda: loop.state.paused, what="backpressure pause")
        time.sleep(1.0)
        held = count(buffer)
        # The limit is enforced per batch: at most one batch gets past it.
        assert high <= held < high + 50
        time.sleep(1.0)
        assert count(buffer) == held, "fetching went on while paused"

        # The labeler (a later stage) drains the backlog; here we mark events labeled directly.
        buffer.cursor().execute(
            "UPDATE events SET state = 'labeled' WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
            [held - low],
        )
        wait_for(lambda: count(buffer) > held, what="resume after the backlog fell")

        def drain_backlog() -> bool:
            buffer.cursor().execute("UPDATE events SET state = 'labeled'")
            return count(buffer) == 2000

        # Pause after pause, every record fetched while paused was dropped and read again on resume.
        wait_for(drain_backlog, what="all 2000 messages through repeated pauses")
        assert loop._metrics.backpressure_pauses._value.get() >= 3
    assert buffer.cursor().execute("SELECT count(DISTINCT id) FROM events").fetchone() == (2000,)
    assert sum(buffer.stored_offsets(topic).values()) == 2000
    buffer.close()


def test_an_unreachable_broker_fails_fast_and_leaves_no_thread(tmp_path: Path, fetcher: FetcherKind) -> None:
    from evolvd.connectors.kafka_source import KafkaUnavailableError

    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:9", topic="t", connect_timeout_s=1)
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    before = threading.active_count()
    with pytest.raises(KafkaUnavailableError, match=r"no Kafka broker answered at 127\.0\.0\.1:9 within 1s"):
        IngestLoop(
            lambda drain: new_source(fetcher, kafka, "127.0.0.1:9", buffer, drain),
            buffer, IngestConfig(), IngestMetrics.create(new_registry()),
        )  # fmt: skip
    assert threading.active_count() == before
    assert multiprocessing.active_children() == []  # no fetcher process left behind either
    buffer.close()


def test_a_killed_fetcher_process_ends_the_loop_with_its_reason_and_a_restart_loses_nothing(
    broker: Any, topic: str, tmp_path: Path
) -> None:
    n = 20_000
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(n)])
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    errors: list[BaseException] = []
    with running_ingest(
        broker.bootstrap_servers, topic, buffer, "process", errors=errors, batch_max_messages=200
    ):
        wait_for(lambda: count(buffer) > 0, what="the first events")
        (child,) = multiprocessing.active_children()  # the fetcher this test's loop started
        assert child.name == "evolvd-kafka-fetcher" and child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: bool(errors), what="the loop to end")
    assert isinstance(errors[0], FetcherExitedError)
    assert str(errors[0]) == f"the Kafka fetcher process exited (code {-signal.SIGKILL})"
    assert count(buffer) < n, "the kill came too late to test anything"

    # What the daemon does next: a new loop on the same buffer, from its stored offsets.
    with running_ingest(broker.bootstrap_servers, topic, buffer, "process"):
        wait_for(lambda: count(buffer) >= n, what=f"{n} events")
        time.sleep(0.5)
    assert count(buffer) == n
    assert buffer.cursor().execute("SELECT count(DISTINCT id) FROM events").fetchone() == (n,)
    buffer.close()


def test_the_consumer_reads_committed_records_only(broker: Any, topic: str, tmp_path: Path) -> None:
    """isolation_level read_committed: records of a transaction its producer aborted are skipped.
    The embedded Tansu 0.6 broker returns no aborted-transaction list in its fetch responses (a
    transactional producer's aborted records reach a read_committed kafka-python consumer there),
    so only the consumer's setting can be checked on this broker."""
    from evolvd.connectors.kafka_source import KafkaSource

    kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers, topic=topic, group_id=f"g-{uuid.uuid4().hex}"
    )
    source = KafkaSource(kafka, broker.bootstrap_servers, lambda: {}, lambda: None)
    try:
        assert source._consumer.config["isolation_level"] == "read_committed"
    finally:
        source.close()


def test_a_second_daemon_with_its_own_buffer_in_the_group_is_detected(
    broker: Any, topic: str, tmp_path: Path
) -> None:
    """Each buffer holds its own position, so two daemons in one group split the traffic between two
    buffers. The group's offsets are never ahead of the buffer of its only member; they are ahead
    of a second member's own buffer, which says so (log, metric, /status) and ingests on."""
    produce(broker.bootstrap_servers, topic, [prompt_message(i) for i in range(100)])
    group = f"g-{uuid.uuid4().hex}"
    first = DuckDBBuffer(tmp_path / "a.duckdb")
    with running_ingest(
        broker.bootstrap_servers, topic, first, "thread", group, group_check_interval_s=0.3
    ) as a:
        wait_for(lambda: sum(first.stored_offsets(topic).values()) == 100)
        time.sleep(1.0)  # several checks after everything is stored and committed
        assert a.state.group_ahead == [] and a._metrics.group_ahead._value.get() == 0
    first.close()

    second = DuckDBBuffer(tmp_path / "b.duckdb")
    with running_ingest(
        broker.bootstrap_servers,
        topic,
        second,
        "thread",
        group,
        group_check_interval_s=0.3,
    ) as b:
        wait_for(lambda: len(b.state.group_ahead) == 2, what="the group's offsets seen ahead of the buffer")
        ahead = {x.partition: (x.group_offset, x.buffer_offset) for x in b.state.group_ahead}
        assert sum(g for g, _ in ahead.values()) == 100 and {s for _, s in ahead.values()} == {None}
        assert b._metrics.group_ahead._value.get() == 2
    second.close()


def test_group_offsets_ahead_of_the_buffer_are_named_per_partition() -> None:
    assert partitions_ahead({0: 10, 1: 5}, {0: 10, 1: 7}) == []  # never ahead: our own commits trail
    (ahead,) = partitions_ahead({0: 10, 1: 9}, {0: 10, 1: 4})
    assert (ahead.partition, ahead.group_offset, ahead.buffer_offset) == (1, 9, 4)
    assert [a.buffer_offset for a in partitions_ahead({2: 3}, {})] == [None]
