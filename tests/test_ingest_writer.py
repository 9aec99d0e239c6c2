"""The ingest writer against a real DuckDB buffer: a record the buffer refuses is isolated into a dead
letter and the rest of its batch is written with its offsets; a buffer that refuses everything is
retried and shows as a stall (the /readyz reason and a metric), and nothing is lost when it recovers."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

from evolvd.abc import EventColumns, Feedback, IngestBatch, IngestResult
from evolvd.buffer import DuckDBBuffer
from evolvd.contract import DeadLetterReason, dead_letter
from evolvd.ingest import WRITER_STALL_UNREADY_S, BatchWriter, WriterStall
from evolvd.metrics import IngestMetrics, new_registry


def batch_with(n: int, bad_rows: dict[int, float], first_offset: int = 0) -> IngestBatch:
    """`n` events on partition 0; the rows in `bad_rows` carry a timestamp DuckDB cannot store (as
    one that got past the contract would)."""
    cols = EventColumns()
    for i in range(n):
        cols.id.append(f"e{first_offset + i}")
        cols.topic.append("t")
        cols.partition.append(0)
        cols.offset.append(first_offset + i)
        cols.prompt.append(f"prompt {i}")
        cols.messages_json.append(None)
        cols.response.append(None)
        cols.metadata_json.append('{"k": 1}')
        cols.ts_epoch_s.append(bad_rows.get(i, 1_763_750_000.0))
        cols.kafka_ts_ms.append(None)
    batch = IngestBatch(events=cols)
    batch.feedback.append(Feedback("e0", 1.0, "up", "t", 1, 0))
    batch.dead_letters.append(dead_letter("t", 1, 1, DeadLetterReason.NOT_JSON, "value is not JSON", b"{{"))
    batch.next_offsets = {("t", 0): first_offset + n, ("t", 1): 2}
    return batch.seal()


class Written:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[tuple[str, int], int], int]] = []

    def __call__(self, offsets: Mapping[tuple[str, int], int], events: int) -> None:
        self.calls.append((dict(offsets), events))


def write(buffer: DuckDBBuffer, *batches: IngestBatch) -> tuple[Written, IngestMetrics, BatchWriter]:
    durable, metrics = Written(), IngestMetrics.create(new_registry())
    writer = BatchWriter(buffer, metrics, durable)
    for batch in batches:
        writer.submit(batch)
    writer.drain()
    writer.close()
    return durable, metrics, writer


def test_a_record_the_buffer_refuses_becomes_a_dead_letter_and_the_rest_of_its_batch_is_written(
    tmp_path: Path,
) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    durable, metrics, writer = write(buffer, batch_with(1000, {17: 1e20, 900: -1e15}))

    cur = buffer.cursor()
    assert buffer.table_counts()["events"] == 998
    assert cur.execute("SELECT count(*) FROM events WHERE id IN ('e17', 'e900')").fetchone() == (0,)
    assert buffer.table_counts()["feedback"] == 1
    rows = cur.execute(
        "SELECT kafka_partition, kafka_offset, reason, detail, raw FROM dead_letters ORDER BY kafka_offset"
    ).fetchall()
    assert [(p, o, r) for p, o, r, _, _ in rows] == [
        (1, 1, "not_json"),
        (0, 17, "unstorable"),
        (0, 900, "unstorable"),
    ]
    for _, _, _, detail, raw in rows[1:]:
        assert detail.startswith("the buffer refused this event: ConversionException")
        assert "out of range" in detail
        assert b'"prompt":"prompt' in raw  # the refused row itself, as JSON
    # One transaction with the batch's offsets: the buffer's position covers the refused rows too.
    assert buffer.stored_offsets("t") == {0: 1000, 1: 2}
    assert durable.calls == [({("t", 0): 1000, ("t", 1): 2}, 1000)]  # the backlog's count as submitted
    assert metrics.dead_letters.labels("unstorable")._value.get() == 2
    assert metrics.messages.labels("event")._value.get() == 998
    assert writer.stall.failing_since is None and "out of range" in (writer.stall.last_error or "")
    buffer.close()


def test_a_batch_behind_a_refused_one_is_written_too(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    write(buffer, batch_with(10, {0: float("inf")}), batch_with(10, {}, first_offset=10))
    assert buffer.table_counts()["events"] == 19
    assert buffer.stored_offsets("t")[0] == 20
    buffer.close()


class FlakyDisk(DuckDBBuffer):
    """The real buffer behind a device that refuses every write until `heal` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.heal = threading.Event()

    def _refuse(self) -> None:
        if not self.heal.is_set():
            raise OSError(28, "No space left on device")

    def write_ingest_batch(self, batch: IngestBatch) -> IngestResult:
        self._refuse()
        return super().write_ingest_batch(batch)

    def probe_ingest_batch(self, batch: IngestBatch) -> None:
        self._refuse()
        super().probe_ingest_batch(batch)


def test_a_buffer_that_refuses_everything_is_a_visible_stall_and_loses_nothing(tmp_path: Path) -> None:
    buffer = FlakyDisk(tmp_path / "b.duckdb")
    registry = new_registry()
    metrics = IngestMetrics.create(registry)
    writer = BatchWriter(buffer, metrics, Written())
    writer.submit(batch_with(50, {}))
    deadline = time.monotonic() + WRITER_STALL_UNREADY_S + 30
    while writer.stall.unready_reason() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    reason = writer.stall.unready_reason()
    assert reason is not None and reason.startswith("the ingest writer cannot write to the buffer: ")
    assert "OSError: [Errno 28] No space left on device" in reason
    assert writer.stall.attempts >= 3
    assert (registry.get_sample_value("evolvd_ingest_writer_failing_seconds") or 0) >= WRITER_STALL_UNREADY_S
    assert buffer.table_counts()["events"] == 0  # nothing was dead-lettered for the device's fault

    buffer.heal.set()
    writer.drain()
    writer.close()
    assert buffer.table_counts()["events"] == 50 and buffer.table_counts()["dead_letters"] == 1
    assert writer.stall.unready_reason() is None and writer.stall.attempts == 0
    assert registry.get_sample_value("evolvd_ingest_writer_failing_seconds") == 0.0
    buffer.close()


def test_the_stall_is_ready_again_within_the_grace_period() -> None:
    stall = WriterStall(failing_since=time.time() - 1, attempts=2, last_error="OSError: x")
    assert stall.unready_reason() is None
    stall.failing_since = time.time() - WRITER_STALL_UNREADY_S - 1
    assert stall.unready_reason() == (
        "the ingest writer cannot write to the buffer: 2 attempts failed in "
        f"{WRITER_STALL_UNREADY_S + 1:.0f}s, the last with OSError: x"
    )
