"""The DuckDB buffer on real files: migrations, refusal of newer schemas, single writer, atomic batches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import batch_of

from evolvd.abc import DeadLetter, Feedback, IngestBatch
from evolvd.buffer import DuckDBBuffer, SchemaTooNewError
from evolvd.buffer.migrations import Migration, bundled_migrations, migrate

EXPECTED_TABLES = {
    "events",
    "feedback",
    "kafka_offsets",
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
    "evaluations",
    "swaps",
    "policy_decisions",
    "schema_migrations",
}


def test_fresh_file_gets_every_table_and_the_latest_version(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    tables = {
        r[0] for r in buffer.cursor().execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert tables >= EXPECTED_TABLES
    assert buffer.schema_version == bundled_migrations()[-1].version
    buffer.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_the_buffer_runs_duckdb_with_the_configured_threads(tmp_path: Path, threads: int) -> None:
    from evolvd.config import BufferConfig

    assert BufferConfig().threads == 1  # the default leaves the other cores to fetcher, vLLM, training
    buffer = DuckDBBuffer(tmp_path / "b.duckdb", threads)
    assert buffer.cursor().execute("SELECT current_setting('threads')").fetchone() == (threads,)
    buffer.close()


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    DuckDBBuffer(path).close()
    buffer = DuckDBBuffer(path)
    rows = buffer.cursor().execute("SELECT version FROM schema_migrations").fetchall()
    assert rows == [(m.version,) for m in bundled_migrations()]
    buffer.close()


def test_a_new_migration_is_applied_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    con = duckdb.connect(str(path))
    shipped = bundled_migrations()
    migrate(con, str(path), shipped)
    extra = Migration(len(shipped) + 1, "add_note", "ALTER TABLE events ADD COLUMN note VARCHAR;")
    assert migrate(con, str(path), [*shipped, extra]) == extra.version
    assert ("note",) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name='events'"
    ).fetchall()
    con.close()


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    con = duckdb.connect(str(path))
    shipped = bundled_migrations()
    broken = Migration(len(shipped) + 1, "broken", "CREATE TABLE half (x INT); SELECT * FROM no_such_table;")
    with pytest.raises(duckdb.CatalogException):
        migrate(con, str(path), [*shipped, broken])
    assert migrate(con, str(path), shipped) == len(shipped)
    assert not con.execute("SELECT * FROM information_schema.tables WHERE table_name = 'half'").fetchall()
    con.close()


def test_a_file_from_a_newer_evolvd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    DuckDBBuffer(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')")
    con.close()
    with pytest.raises(SchemaTooNewError, match="schema version 999, but this evolvd understands up to"):
        DuckDBBuffer(path)


def test_a_second_process_cannot_open_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    buffer = DuckDBBuffer(path)
    code = (
        "import sys; from pathlib import Path; from evolvd.buffer import DuckDBBuffer, BufferLockedError\n"
        f"try: DuckDBBuffer(Path({str(path)!r}))\n"
        "except BufferLockedError as e: print(e); sys.exit(7)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    buffer.close()
    assert result.returncode == 7, result.stderr
    assert "is open in another process" in result.stdout
    assert "admin API" in result.stdout


def test_events_and_offsets_are_written_together(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    result = buffer.write_ingest_batch(batch_of(["a", "b", "c"], first_offset=10))
    assert (result.inserted, result.duplicates) == (3, 0)
    assert buffer.stored_offsets("t") == {0: 13}
    rows = (
        buffer.cursor()
        .execute("SELECT id, kafka_offset, prompt_hash = sha256(prompt), state FROM events ORDER BY id")
        .fetchall()
    )
    assert rows == [("a", 10, True, "pending"), ("b", 11, True, "pending"), ("c", 12, True, "pending")]
    assert buffer.backlog() == 3
    buffer.close()


def test_duplicate_ids_are_dropped_within_and_across_batches(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    first = buffer.write_ingest_batch(batch_of(["a", "b", "a"]))
    second = buffer.write_ingest_batch(batch_of(["b", "c"], first_offset=3))
    assert (first.inserted, first.duplicates) == (2, 1)
    assert (second.inserted, second.duplicates) == (1, 1)
    # The first occurrence wins: "a" keeps offset 0, not 2.
    assert buffer.cursor().execute("SELECT kafka_offset FROM events WHERE id = 'a'").fetchall() == [(0,)]
    assert buffer.table_counts()["events"] == 3
    buffer.close()


def test_a_failed_batch_writes_nothing_not_even_its_offsets(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    buffer.write_ingest_batch(batch_of(["a"]))
    bad = batch_of(["b", "c"], first_offset=1)
    # A dead letter whose partition cannot be stored makes the transaction fail after the events insert.
    bad.dead_letters.append(DeadLetter("t", 2**40, 0, "not_json", "x", b"x"))
    with pytest.raises(duckdb.Error):
        buffer.write_ingest_batch(bad)
    assert buffer.table_counts()["events"] == 1
    assert buffer.stored_offsets("t") == {0: 1}
    buffer.close()


def test_feedback_and_dead_letters_are_stored_with_their_position(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    batch = IngestBatch(
        feedback=[Feedback("a", 1.0, "up", "t", 0, 5)],
        dead_letters=[DeadLetter("t", 0, 6, "not_json", "value is not JSON", b"\x00junk")],
        next_offsets={("t", 0): 7},
    )
    buffer.write_ingest_batch(batch)
    assert buffer.cursor().execute("SELECT event_id, value, kafka_offset FROM feedback").fetchall() == [
        ("a", 1.0, 5)
    ]
    assert buffer.cursor().execute("SELECT reason, kafka_offset, raw FROM dead_letters").fetchall() == [
        ("not_json", 6, b"\x00junk")
    ]
    assert buffer.dead_letters_by_reason() == {"not_json": 1}
    buffer.close()


def test_status_checks_keep_rows_from_before_and_refuse_unknown_states(tmp_path: Path) -> None:
    """Migration 0008 rebuilds the state machines' tables with CHECK constraints: rows written under
    0007 survive unchanged, and a status the code does not know is refused."""
    path = tmp_path / "b.duckdb"
    con = duckdb.connect(str(path))
    shipped = bundled_migrations()
    checks = next(m for m in shipped if m.name == "status_checks")
    migrate(con, str(path), [m for m in shipped if m.version < checks.version])
    con.execute(
        "INSERT INTO runs (run_id, dataset_id, kind, status, config)"
        " VALUES ('r1', 'd1', 'sft', 'failed', '{}')"
    )
    con.execute(
        "INSERT INTO adapters (name, version, run_id, status, path, manifest, gated)"
        " VALUES ('a-v1', 1, 'r1', 'live', '/x', '{}', true)"
    )
    con.execute(
        "INSERT INTO canaries (adapter_name, share, window_s, min_requests) VALUES ('a-v1', 0.1, 60, 5)"
    )
    con.execute("INSERT INTO job_runs (job, trigger, outcome) VALUES ('training', 'manual', 'idle')")
    assert migrate(con, str(path), shipped) == shipped[-1].version
    assert con.execute("SELECT status FROM runs").fetchall() == [("failed",)]
    assert con.execute("SELECT status, gated FROM adapters").fetchall() == [("live", True)]
    assert con.execute("SELECT outcome FROM canaries").fetchall() == [(None,)]
    con.execute("INSERT INTO job_runs (job, trigger) VALUES ('training', 'manual')")  # the sequence goes on
    assert [r[0] for r in con.execute("SELECT job_run_id FROM job_runs ORDER BY 1").fetchall()] == [1, 2]
    for bad in (
        "UPDATE runs SET status = 'queued'",
        "UPDATE adapters SET status = 'promoted'",
        "UPDATE canaries SET outcome = 'passed'",
        "UPDATE job_runs SET outcome = 'done'",
    ):
        with pytest.raises(duckdb.ConstraintException):
            con.execute(bad)
    con.close()
