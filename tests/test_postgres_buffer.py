"""The PostgreSQL buffer against a real server (the session's, tests/postgres_server.py): the shared
schema, atomic ingest batches, dedup by id, offsets that only move forward, and clear errors."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import psycopg
import pytest
from helpers import batch_of

from evolvd.abc import DeadLetter, Feedback, IngestBatch
from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.heldout import heldout_condition, heldout_sides
from evolvd.buffer.migrations import bundled_migrations, postgres_sql
from evolvd.buffer.postgres_buffer import BufferUnavailableError, PostgresBuffer, shown_url


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as con:
        return con.execute(sql.encode()).fetchall()


def test_two_members_starting_together_build_one_schema(postgres_url: str) -> None:
    buffers: list[PostgresBuffer] = []
    threads = [
        threading.Thread(target=lambda: buffers.append(PostgresBuffer(postgres_url))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert [b.schema_version for b in buffers] == [bundled_migrations()[-1].version] * 2
        applied = rows(postgres_url, "SELECT version FROM schema_migrations ORDER BY version")
        assert applied == [(m.version,) for m in bundled_migrations()]  # each migration once
        assert buffers[0].table_counts()["events"] == 0
    finally:
        for buffer in buffers:
            buffer.close()


def test_the_schema_matches_the_duckdb_buffers_columns(postgres_url: str, tmp_path: Any) -> None:
    """One schema, two dialects: every table has the same columns on both backends."""
    pg = PostgresBuffer(postgres_url)
    duck = DuckDBBuffer(tmp_path / "b.duckdb")
    try:
        query = (
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema IN ('public', 'main') ORDER BY 1, 2"
        )
        assert rows(postgres_url, query) == duck.cursor().execute(query).fetchall()
    finally:
        pg.close()
        duck.close()
    assert "DOUBLE PRECISION" in postgres_sql("score DOUBLE,") and "BYTEA" in postgres_sql("raw BLOB,")


def test_a_batch_is_atomic_and_ids_are_stored_once(postgres_url: str) -> None:
    buffer = PostgresBuffer(postgres_url)
    try:
        first = batch_of(["a", "b", "a"])  # a repeated id inside one batch: the first one wins
        first.feedback.append(Feedback("a", 1.0, "up", "t", 0, 3))
        first.dead_letters.append(DeadLetter("t", 0, 4, "not_json", "not JSON", b"{", 1, "ab"))
        first.next_offsets[("t", 0)] = 5
        result = buffer.write_ingest_batch(first)
        assert (result.inserted, result.duplicates) == (2, 1)
        again = batch_of(["b", "c"], first_offset=5)  # b again, after a re-read
        assert buffer.write_ingest_batch(again).inserted == 1
        assert buffer.stored_offsets("t") == {0: 7}
        assert buffer.table_counts()["events"] == 3 and buffer.backlog() == 3
        assert buffer.dead_letters_by_reason() == {"not_json": 1}
        assert buffer.events_by_state() == {"pending": 3}
        (hashed,) = rows(postgres_url, "SELECT prompt_hash FROM events WHERE id = 'a'")
        assert hashed[0] == hashlib.sha256(b"prompt a").hexdigest()  # as the DuckDB buffer hashes

        # A batch the server refuses leaves nothing behind, its offsets included.
        bad = batch_of(["d"], first_offset=7)
        bad.dead_letters.append(DeadLetter("t", 0, 8, "x" * 10, "detail", b"", 0, "cd"))
        bad.next_offsets[("t", 0)] = 9
        bad.feedback.append(Feedback("d", 1.0, "refused", "t", 0, 9))
        with psycopg.connect(postgres_url) as con:  # the last statement of the batch's transaction fails
            con.execute(b"ALTER TABLE kafka_offsets ADD CONSTRAINT below CHECK (next_offset < 9)")
        with pytest.raises(psycopg.errors.CheckViolation):
            buffer.write_ingest_batch(bad)
        assert buffer.stored_offsets("t") == {0: 7} and buffer.table_counts()["events"] == 3
        assert buffer.dead_letters_by_reason() == {"not_json": 1} and buffer.table_counts()["feedback"] == 1
        # The probe writes and rolls back: what the real write would raise, nothing kept.
        buffer.probe_ingest_batch(batch_of(["e"], first_offset=7))
        assert buffer.table_counts()["events"] == 3
    finally:
        buffer.close()


def test_a_member_that_lost_its_partition_cannot_move_the_position_back(postgres_url: str) -> None:
    """Member B took partition 0 in a rebalance and wrote up to offset 150; member A then writes the
    batch it still held (100..119): its events are duplicates, and the position stays at 150."""
    a, b = PostgresBuffer(postgres_url), PostgresBuffer(postgres_url)
    try:
        held_by_a = batch_of([f"m{i}" for i in range(100, 120)], first_offset=100)
        b.write_ingest_batch(batch_of([f"m{i}" for i in range(100, 150)], first_offset=100))
        assert a.write_ingest_batch(held_by_a).inserted == 0
        assert a.stored_offsets("t") == b.stored_offsets("t") == {0: 150}
        # A dead letter re-read after a rebalance is kept once too.
        for member in (a, b):
            letter = IngestBatch(dead_letters=[DeadLetter("t", 1, 7, "not_json", "x", b"{", 1, "ab")])
            member.write_ingest_batch(letter)
        assert a.dead_letters_by_reason() == {"not_json": 1}
    finally:
        a.close()
        b.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password(postgres: Any) -> None:
    url = f"postgresql://evolvd:secret@127.0.0.1:{postgres.port + 1}/evolvd"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(BufferUnavailableError, match="no PostgreSQL server answered") as caught:
        PostgresBuffer(url, connect_timeout_s=2)
    assert time.monotonic() - started < 10
    assert "secret" not in str(caught.value) and shown_url(url) in str(caught.value)


def test_the_heldout_slice_and_intervals_are_the_same_on_both_backends(postgres_url: str) -> None:
    """The held-out slice is md5_number(key || prompt_hash) % 100: PostgreSQL computes DuckDB's value
    (evolvd.buffer.postgres_functions), so a prompt is held out, or not, whichever backend holds it."""
    buffer = PostgresBuffer(postgres_url)
    try:
        key = "k" * 64
        hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(300)]
        sql = (
            f"SELECT {heldout_condition('h')} FROM unnest(?::varchar[]) WITH ORDINALITY AS t(h, n) ORDER BY n"
        )
        on_postgres = [bool(r[0]) for r in buffer.cursor().execute(sql, [key, 10, hashes]).fetchall()]
        assert on_postgres == heldout_sides(key, hashes, 10)  # DuckDB's md5_number, in memory
        assert 10 < sum(on_postgres) < 50
        for value in ("", "abc", "é" * 40):
            pg = buffer.cursor().execute("SELECT md5_number(?)", [value]).fetchone()
            assert pg is not None and int(pg[0]) == int.from_bytes(
                hashlib.md5(value.encode()).digest(), "little"
            )
        row = buffer.cursor().execute("SELECT to_seconds(?) = INTERVAL '90 minutes'", [5400.0]).fetchone()
        assert row == (True,)
    finally:
        buffer.close()
