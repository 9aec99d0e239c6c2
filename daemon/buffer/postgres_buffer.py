"""The PostgreSQL buffer (`buffer.backend: postgres`): one shared system of record for several daemon
processes, each writing its own Kafka partitions through one connection pool.

The guarantees are the DuckDB buffer's: an ingest batch's events, feedback, dead letters and partition
offsets commit in one transaction, and an event id is stored once (ON CONFLICT DO NOTHING). Several
writers add one rule: a partition's stored offset only moves forward, so a member that lost a partition
in a rebalance and writes the batch it still held can never move the buffer's position back (its
events are already there, or are skipped as duplicates).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from evolvd.abc import IngestBatch, IngestResult, IngestSink
from evolvd.buffer.duckdb_buffer import COUNTED_TABLES
from evolvd.buffer.migrations import bundled_migrations, postgres_sql, refuse_newer
from evolvd.buffer.postgres_functions import DUCKDB_FUNCTIONS
from evolvd.buffer.sampling import sampled_backlog
from evolvd.buffer.sql import PostgresSql

logger = logging.getLogger("evolvd.buffer")

MIGRATION_LOCK = 0x65766F6C7664  # "evolvd": members starting together migrate one at a time

# Only a shared buffer has several writers of one partition (for the moments of a rebalance), so
# only it needs the position of a dead letter to be unique: a re-read bad message is kept once.
SHARED_WRITER_CONSTRAINTS = (
    "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_by_position"
    " ON dead_letters (topic, kafka_partition, kafka_offset)"
)

# Columns arrive as arrays (one statement per batch); hashing and timestamps are computed by the server.
_INSERT_EVENTS = """
INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, messages, response, metadata,
                    ts, kafka_ts, prompt_hash)
SELECT id, topic, part, off, prompt, messages::json, response, metadata::json,
       to_timestamp(ts_epoch_s), to_timestamp(kafka_ts_ms / 1000.0),
       encode(sha256(convert_to(coalesce(prompt, messages), 'UTF8')), 'hex')
FROM unnest(%s::varchar[], %s::varchar[], %s::integer[], %s::bigint[], %s::varchar[], %s::varchar[],
            %s::varchar[], %s::varchar[], %s::double precision[], %s::bigint[])
     AS incoming(id, topic, part, off, prompt, messages, response, metadata, ts_epoch_s, kafka_ts_ms)
ON CONFLICT (id) DO NOTHING
"""
_EVENT_COLUMNS = (
    "id",
    "topic",
    "partition",
    "offset",
    "prompt",
    "messages_json",
    "response",
    "metadata_json",
    "ts_epoch_s",
    "kafka_ts_ms",
)
_INSERT_FEEDBACK = """
INSERT INTO feedback (event_id, value, raw, topic, kafka_partition, kafka_offset)
SELECT * FROM unnest(%s::varchar[], %s::double precision[], %s::varchar[], %s::varchar[], %s::integer[],
                     %s::bigint[])
ON CONFLICT DO NOTHING
"""
_INSERT_DEAD_LETTERS = """
INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, detail, raw, raw_bytes, raw_sha256)
SELECT * FROM unnest(%s::varchar[], %s::integer[], %s::bigint[], %s::varchar[], %s::varchar[], %s::bytea[],
                     %s::bigint[], %s::varchar[])
ON CONFLICT DO NOTHING
"""
_UPSERT_OFFSETS = """
INSERT INTO kafka_offsets (topic, kafka_partition, next_offset)
SELECT * FROM unnest(%s::varchar[], %s::integer[], %s::bigint[])
ON CONFLICT (topic, kafka_partition) DO UPDATE
SET next_offset = greatest(kafka_offsets.next_offset, excluded.next_offset), updated_at = now()
"""


class BufferUnavailableError(RuntimeError):
    """No PostgreSQL server answered at the configured URL; the message says where and why."""


def shown_url(url: str) -> str:
    """The URL without its password, for logs and /status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def migrate_postgres(con: psycopg.Connection[Any], where: str) -> int:
    """Bring the shared schema up to date, one member at a time; returns the version in force."""
    migrations = bundled_migrations()
    latest = migrations[-1].version
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK])
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
        )
        row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        version = int(row[0]) if row else 0
        refuse_newer(version, latest, where, "run a newer evolvd on every member")
        for migration in migrations:
            if migration.version <= version:
                continue
            logger.info("applying buffer migration %04d_%s to %s", migration.version, migration.name, where)
            con.execute(postgres_sql(migration.sql).encode())  # bytes: no parameters, several statements
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                [migration.version, migration.name],
            )
            version = migration.version
        con.execute(SHARED_WRITER_CONSTRAINTS)
        con.execute(DUCKDB_FUNCTIONS.encode())  # bytes: several statements
    return version


def json_as_text(con: psycopg.Connection[Any]) -> None:
    """JSON columns read as their text, as DuckDB returns them: the owners parse what they need, the
    same way on both backends."""
    for name in ("json", "jsonb"):
        con.adapters.register_loader(name, TextLoader)


def connect(url: str, connect_timeout_s: float) -> psycopg.Connection[Any]:
    """A connection of its own (not the pool's), in autocommit mode, JSON read as text."""
    con = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(connect_timeout_s)))
    json_as_text(con)
    return con


class PostgresBuffer(IngestSink):
    """The shared buffer. Every method takes a pooled connection for one transaction and returns it."""

    def __init__(
        self, url: str, pool_size: int = 4, connect_timeout_s: float = 10.0, sample_share: float = 1.0
    ) -> None:
        self.url = url
        self.sample_share = sample_share
        self.shown = shown_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._sessions: list[psycopg.Connection[Any]] = []
        self._sessions_lock = threading.Lock()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
            configure=json_as_text,
            name="evolvd-buffer",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise BufferUnavailableError(
                f"no PostgreSQL server answered at {self.shown} within {connect_timeout_s:g}s "
                "(buffer.postgres_url; the password comes from $PGPASSWORD or ~/.pgpass)"
            ) from exc
        try:
            with self._pool.connection() as con:
                self.schema_version = migrate_postgres(con, self.shown)
        except BaseException:
            self._pool.close()
            raise

    def cursor(self) -> PostgresSql:
        """This thread's own connection, for the tables' owners (as DuckDBBuffer.cursor): opened on
        first use, opened again after the server dropped it."""
        con: psycopg.Connection[Any] | None = getattr(self._local, "connection", None)
        if con is None or con.closed or con.broken:
            con = connect(self.url, self._connect_timeout_s)
            self._local.connection = con
            with self._sessions_lock:
                self._sessions.append(con)
        return PostgresSql(con)

    def close(self) -> None:
        with self._sessions_lock:
            for con in self._sessions:
                con.close()
            self._sessions.clear()
        self._pool.close()

    # -- ingest ------------------------------------------------------------------------------

    def write_ingest_batch(self, batch: IngestBatch) -> IngestResult:
        """Events, feedback, dead letters and the new partition offsets, all in one transaction."""
        with self._pool.connection() as con, con.transaction():
            inserted = self._write_ingest(con, batch)
        return IngestResult(inserted=inserted, duplicates=batch.event_count - inserted)

    def probe_ingest_batch(self, batch: IngestBatch) -> None:
        """Write `batch` and roll it back: raises what the real write would raise, keeps nothing."""
        with self._pool.connection() as con, con.transaction():
            self._write_ingest(con, batch)
            raise psycopg.Rollback  # ends the block: everything written is rolled back, nothing raised

    @staticmethod
    def _write_ingest(con: psycopg.Connection[Any], batch: IngestBatch) -> int:
        inserted = 0
        for table in batch.event_tables:
            columns = [table.column(name).to_pylist() for name in _EVENT_COLUMNS]
            inserted += con.execute(_INSERT_EVENTS, columns).rowcount
        if batch.feedback:
            rows = batch.feedback
            con.execute(
                _INSERT_FEEDBACK,
                [
                    [f.event_id for f in rows],
                    [f.value for f in rows],
                    [f.raw for f in rows],
                    [f.topic for f in rows],
                    [f.partition for f in rows],
                    [f.offset for f in rows],
                ],
            )
        if batch.dead_letters:
            dead = batch.dead_letters
            con.execute(
                _INSERT_DEAD_LETTERS,
                [
                    [d.topic for d in dead],
                    [d.partition for d in dead],
                    [d.offset for d in dead],
                    [d.reason for d in dead],
                    [d.detail for d in dead],
                    [d.raw for d in dead],
                    [d.raw_bytes for d in dead],
                    [d.raw_sha256 for d in dead],
                ],
            )
        if batch.next_offsets:
            positions = list(batch.next_offsets.items())
            con.execute(
                _UPSERT_OFFSETS,
                [[t for (t, _), _ in positions], [p for (_, p), _ in positions], [o for _, o in positions]],
            )
        return inserted

    def stored_offsets(self, topic: str) -> dict[int, int]:
        rows = self._fetch("SELECT kafka_partition, next_offset FROM kafka_offsets WHERE topic = %s", [topic])
        return {int(p): int(o) for p, o in rows}

    def backlog(self) -> int:
        """Prompts waiting to be labeled: copies of one prompt are labeled once, so they count once."""
        if self.sample_share < 1:
            return sampled_backlog(self.cursor(), self.sample_share)
        rows = self._fetch("SELECT count(DISTINCT prompt_hash) FROM events WHERE state = 'pending'")
        return int(rows[0][0])

    def feedback_on(self, served_by: str, since: dt.datetime) -> list[tuple[str, str | None, float]]:
        """(event id, the capture's seal, value) of the feedback received since `since` on answers
        `served_by` gave (as DuckDBBuffer.feedback_on)."""
        rows = self._fetch(
            "SELECT e.id, e.metadata->>'seal', f.value FROM feedback f JOIN events e ON e.id = f.event_id"
            " WHERE e.metadata->>'served_by' = %s AND f.received_at >= %s",
            [served_by, since],
        )
        return [(str(event_id), seal, float(value)) for event_id, seal, value in rows]

    # -- reads for /status and metrics -------------------------------------------------------

    def table_counts(self) -> dict[str, int]:
        sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in COUNTED_TABLES)  # noqa: S608
        return {str(name): int(n) for name, n in self._fetch(sql)}

    def dead_letters_by_reason(self) -> dict[str, int]:
        return {
            str(r): int(n)
            for r, n in self._fetch("SELECT reason, count(*) FROM dead_letters GROUP BY reason")
        }

    def events_by_state(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._fetch("SELECT state, count(*) FROM events GROUP BY state")}

    def _fetch(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._pool.connection() as con:
            return con.execute(sql, params).fetchall()
