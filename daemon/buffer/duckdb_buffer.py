"""The DuckDB buffer: one file, one writer process (the daemon), one cursor per thread inside it."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import duckdb
import pyarrow as pa

from evolvd.abc import IngestBatch, IngestResult, IngestSink
from evolvd.buffer.migrations import migrate
from evolvd.buffer.sampling import sampled_backlog

logger = logging.getLogger("evolvd.buffer")


class Transactional(Protocol):
    def begin(self) -> Any: ...

    def commit(self) -> Any: ...

    def rollback(self) -> Any: ...


C = TypeVar("C", bound=Transactional)


@contextmanager
def transaction(con: C) -> Iterator[C]:
    """Commit what the block wrote, or roll all of it back if the block raises (a kill too). Either
    backend's connection (a DuckDB cursor, evolvd.buffer.sql.PostgresSql)."""
    con.begin()
    try:
        yield con
        con.commit()
    except BaseException:
        con.rollback()
        raise


def rows_as_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The result of an executed query as JSON-able rows (timestamps as ISO strings)."""
    names = [d[0] for d in cursor.description or []]
    return [
        {n: (v.isoformat() if hasattr(v, "isoformat") else v) for n, v in zip(names, row, strict=True)}
        for row in cursor.fetchall()
    ]


# Tables whose row counts /status and the metrics report.
COUNTED_TABLES = (
    "events",
    "feedback",
    "dead_letters",
    "samples",
    "labels",
    "critiques",
    "refinements",
    "preference_pairs",
    "training_examples",
    "datasets",
    "runs",
    "adapters",
    "policy_decisions",
)

# Hashing and timestamp conversion happen here, inside DuckDB, off the GIL and off the ingest thread.
_INSERT_EVENTS = """
INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, messages, response, metadata,
                    ts, kafka_ts, prompt_hash)
SELECT id, topic, "partition", "offset", prompt, messages_json, response, metadata_json,
       to_timestamp(ts_epoch_s), epoch_ms(kafka_ts_ms), sha256(coalesce(prompt, messages_json))
FROM incoming
ON CONFLICT (id) DO NOTHING  -- also inside one batch: the first occurrence of an id wins

"""


class BufferLockedError(RuntimeError):
    """Another process holds the buffer open for writing."""


class DuckDBBuffer(IngestSink):
    """evolvd's state. Only the daemon opens it; other processes ask the daemon's admin API."""

    def __init__(self, path: Path, threads: int = 1, sample_share: float = 1.0) -> None:
        """`threads`: DuckDB's worker threads (config buffer.threads); `sample_share`: the share of
        prompts labeled (labeling.sample_share): the backlog counts only those."""
        self.path = path
        self.sample_share = sample_share
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(str(path), config={"threads": threads})
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise BufferLockedError(
                    f"buffer {path} is open in another process (is an `evolvd run` already using it?); "
                    "only the daemon writes the buffer: read it through the admin API"
                ) from exc
            raise
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        self.schema_version = migrate(self._db, str(path))

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """This thread's connection to the buffer (DuckDB connections must not be shared across threads)."""
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._db.cursor()
            self._local.cursor = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    def close(self) -> None:
        with self._cursors_lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
        self._db.close()

    # -- ingest ------------------------------------------------------------------------------

    def write_ingest_batch(self, batch: IngestBatch) -> IngestResult:
        """Events, feedback, dead letters and the new partition offsets, all in one transaction."""
        with transaction(self.cursor()) as con:
            inserted = self._write_ingest(con, batch)
        return IngestResult(inserted=inserted, duplicates=batch.event_count - inserted)

    def probe_ingest_batch(self, batch: IngestBatch) -> None:
        """Write `batch` and roll it back: raises what the real write would raise, keeps nothing."""
        con = self.cursor()
        con.begin()
        try:
            self._write_ingest(con, batch)
        finally:
            con.rollback()

    def _write_ingest(self, con: duckdb.DuckDBPyConnection, batch: IngestBatch) -> int:
        inserted = self._insert_events(con, batch) if batch.event_tables else 0
        if batch.feedback:
            self._insert_feedback(con, batch)
        if batch.dead_letters:
            self._insert_dead_letters(con, batch)
        if batch.next_offsets:
            con.executemany(
                "INSERT INTO kafka_offsets (topic, kafka_partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, kafka_partition) DO UPDATE SET "
                "next_offset = excluded.next_offset, updated_at = now()",
                [[t, p, o] for (t, p), o in batch.next_offsets.items()],
            )
        return inserted

    @staticmethod
    def _insert_events(con: duckdb.DuckDBPyConnection, batch: IngestBatch) -> int:
        tables = batch.event_tables
        incoming = tables[0] if len(tables) == 1 else pa.concat_tables(tables)  # noqa: F841 - read by DuckDB
        row = con.execute(_INSERT_EVENTS).fetchone()
        return int(row[0]) if row else 0

    # Feedback and dead letters go in through Arrow like events: executemany costs about a
    # millisecond per row here, so a flood of bad messages would otherwise slow ingest thirtyfold.
    @staticmethod
    def _insert_feedback(con: duckdb.DuckDBPyConnection, batch: IngestBatch) -> None:
        rows = batch.feedback
        incoming_feedback = pa.table(  # noqa: F841 - read by DuckDB
            {
                "event_id": pa.array([f.event_id for f in rows], pa.string()),
                "value": pa.array([f.value for f in rows], pa.float64()),
                "raw": pa.array([f.raw for f in rows], pa.string()),
                "topic": pa.array([f.topic for f in rows], pa.string()),
                "kafka_partition": pa.array([f.partition for f in rows], pa.int64()),
                "kafka_offset": pa.array([f.offset for f in rows], pa.int64()),
            }
        )
        con.execute(
            "INSERT INTO feedback (event_id, value, raw, topic, kafka_partition, kafka_offset) "
            "SELECT * FROM incoming_feedback ON CONFLICT DO NOTHING"
        )

    @staticmethod
    def _insert_dead_letters(con: duckdb.DuckDBPyConnection, batch: IngestBatch) -> None:
        rows = batch.dead_letters
        incoming_dead = pa.table(  # noqa: F841 - read by DuckDB
            {
                "topic": pa.array([d.topic for d in rows], pa.string()),
                "kafka_partition": pa.array([d.partition for d in rows], pa.int64()),
                "kafka_offset": pa.array([d.offset for d in rows], pa.int64()),
                "reason": pa.array([d.reason for d in rows], pa.string()),
                "detail": pa.array([d.detail for d in rows], pa.string()),
                "raw": pa.array([d.raw for d in rows], pa.binary()),
                "raw_bytes": pa.array([d.raw_bytes for d in rows], pa.int64()),
                "raw_sha256": pa.array([d.raw_sha256 for d in rows], pa.string()),
            }
        )
        con.execute(
            "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, detail, raw, raw_bytes,"
            " raw_sha256) SELECT * FROM incoming_dead"
        )

    def stored_offsets(self, topic: str) -> dict[int, int]:
        rows = (
            self.cursor()
            .execute("SELECT kafka_partition, next_offset FROM kafka_offsets WHERE topic = ?", [topic])
            .fetchall()
        )
        return {int(p): int(o) for p, o in rows}

    def backlog(self) -> int:
        """Prompts waiting to be labeled: copies of one prompt are labeled once, so they count once."""
        con = self.cursor()
        if self.sample_share < 1:
            return sampled_backlog(con, self.sample_share)
        row = con.execute("SELECT count(DISTINCT prompt_hash) FROM events WHERE state = 'pending'").fetchone()
        return int(row[0]) if row else 0

    def feedback_on(self, served_by: str, since: dt.datetime) -> list[tuple[str, str | None, float]]:
        """(event id, the capture's seal, value) of the feedback received since `since` on answers
        `served_by` gave (the canary compares them; the caller checks the seals)."""
        rows = (
            self.cursor()
            .execute(
                "SELECT e.id, json_extract_string(e.metadata, '$.seal'), f.value FROM feedback f"
                " JOIN events e ON e.id = f.event_id"
                " WHERE json_extract_string(e.metadata, '$.served_by') = ? AND f.received_at >= ?",
                [served_by, since],
            )
            .fetchall()
        )
        return [(str(event_id), seal, float(value)) for event_id, seal, value in rows]

    # -- reads for /status and metrics -------------------------------------------------------

    def table_counts(self) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in COUNTED_TABLES)  # noqa: S608
        return {name: int(n) for name, n in self.cursor().execute(sql).fetchall()}

    def dead_letters_by_reason(self) -> dict[str, int]:
        rows = self.cursor().execute("SELECT reason, count(*) FROM dead_letters GROUP BY reason").fetchall()
        return {str(r): int(n) for r, n in rows}

    def events_by_state(self) -> dict[str, int]:
        rows = self.cursor().execute("SELECT state, count(*) FROM events GROUP BY state").fetchall()
        return {str(s): int(n) for s, n in rows}
