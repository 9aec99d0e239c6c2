"""Retention ages rows out of a real buffer, DuckDB and PostgreSQL (issues 20, 22): old events go with
every row derived from them, events a snapshot trained on stay for lineage, old dead letters go, and
the space of a DuckDB file is reused."""

from __future__ import annotations

import os
from pathlib import Path

from evolvd.buffer import Buffer, DuckDBBuffer, Sql
from evolvd.buffer.retention import RetentionCutoffs, age_out

DERIVED = (
    "samples", "labels", "critiques", "refinements", "preference_pairs", "training_examples", "feedback",
)  # fmt: skip
CUTOFFS = RetentionCutoffs(events_days=30, dead_letters_days=14, job_runs_days=30)


def add_event(con: Sql, event_id: str, offset: int, age_days: float) -> int:
    """An event with one row in each derived table; returns its training example's id."""
    ingested = f"now() - INTERVAL '{int(age_days * 24)} hours'"
    con.execute(
        "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash, state,"
        f" ingested_at) VALUES (?, 't', 0, ?, ?, ?, 'labeled', {ingested})",
        [event_id, offset, f"prompt {event_id}", f"hash-{event_id}"],
    )
    con.execute(
        "INSERT INTO feedback (event_id, value, raw, topic, kafka_partition, kafka_offset)"
        " VALUES (?, 1, 'up', 'fb', 0, ?)",
        [event_id, offset],
    )
    sample = con.execute(
        "INSERT INTO samples (event_id, model_version, labeler_version, params, text)"
        " VALUES (?, 'm', 'l', '{}', 'answer') RETURNING sample_id",
        [event_id],
    ).fetchone()
    assert sample is not None
    con.execute(
        "INSERT INTO labels (event_id, answer, confidence, n_samples, votes, model_version, labeler_version)"
        " VALUES (?, 'a', 1.0, 1, '{}', 'm', 'l')",
        [event_id],
    )
    critique = con.execute(
        "INSERT INTO critiques (event_id, sample_id, text, score_status, model_version, labeler_version)"
        " VALUES (?, ?, 'fine', 'ok', 'm', 'l') RETURNING critique_id",
        [event_id, sample[0]],
    ).fetchone()
    assert critique is not None
    con.execute(
        "INSERT INTO refinements (event_id, source_sample_id, critique_id, text, accepted, reason,"
        " model_version, labeler_version) VALUES (?, ?, ?, 'better', true, 'ok', 'm', 'l')",
        [event_id, sample[0], critique[0]],
    )
    con.execute(
        "INSERT INTO preference_pairs (event_id, prompt, chosen, rejected, margin, model_version,"
        " labeler_version) VALUES (?, 'p', 'c', 'r', 1, 'm', 'l')",
        [event_id],
    )
    example = con.execute(
        "INSERT INTO training_examples (event_id, format, prompt, completion, confidence, model_version,"
        " labeler_version) VALUES (?, 'direct', 'p', 'c', 1.0, 'm', 'l') RETURNING example_id",
        [event_id],
    ).fetchone()
    assert example is not None
    con.execute(
        "INSERT INTO policy_decisions (policy, policy_hash, subject_kind, subject_id, outcome, reasons)"
        " VALUES ('safety', 'h', 'example', ?, 'allow', '[]')",
        [str(example[0])],
    )
    return int(example[0])


def rows(con: Sql, table: str, event_id: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {table} WHERE event_id = ?", [event_id]).fetchone()
    return int(row[0]) if row else 0


def test_old_events_go_with_everything_derived_and_trained_ones_stay(either_buffer: Buffer) -> None:
    con = either_buffer.cursor()
    old_example = add_event(con, "old", 0, age_days=40)
    add_event(con, "recent", 1, age_days=2)
    trained_example = add_event(con, "old-trained", 2, age_days=40)
    con.execute(
        "INSERT INTO datasets (dataset_id, path, n_examples, n_pairs, source_query)"
        " VALUES ('d1', 'x', 1, 0, 'q')"
    )
    con.execute("INSERT INTO dataset_examples VALUES ('d1', ?, false)", [trained_example])
    con.execute(
        "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, detail, received_at)"
        " VALUES ('t', 0, 9, 'not_json', 'x', now() - INTERVAL '20 days'),"
        " ('t', 0, 10, 'not_json', 'y', now())"
    )
    con.execute("INSERT INTO kafka_offsets (topic, kafka_partition, next_offset) VALUES ('t', 0, 11)")

    aged = age_out(con, CUTOFFS)

    assert not aged.checkpoint_deferred
    assert aged.deleted == {
        "policy_decisions": 1,
        **{t: 1 for t in DERIVED},
        "events": 1,
        "dead_letters": 1,
    }
    assert all(rows(con, t, "old") == 0 for t in DERIVED)
    for kept in ("recent", "old-trained"):  # too young, or lineage of a snapshot
        assert all(rows(con, t, kept) == 1 for t in DERIVED), kept
    ids = {r[0] for r in con.execute("SELECT id FROM events").fetchall()}
    assert ids == {"recent", "old-trained"}
    decisions = {r[0] for r in con.execute("SELECT subject_id FROM policy_decisions").fetchall()}
    assert str(old_example) not in decisions and str(trained_example) in decisions
    assert con.execute("SELECT kafka_offset FROM dead_letters").fetchall() == [(10,)]
    assert con.execute("SELECT next_offset FROM kafka_offsets").fetchall() == [(11,)], "the position stays"
    assert age_out(con, CUTOFFS).total == 0, "a second pass finds nothing"


def test_beyond_the_size_caps_the_oldest_go_and_lineage_stays(either_buffer: Buffer) -> None:
    """retention.max_events / max_dead_letters: only the newest are kept, however young the rest;
    an event a snapshot trained on stays beyond the cap (lineage)."""
    con = either_buffer.cursor()
    for i in range(6):
        add_event(con, f"e{i}", i, age_days=1 + (6 - i) / 24)  # e5 is the newest; all young
    trained = add_event(con, "trained", 9, age_days=2)
    con.execute(
        "INSERT INTO datasets (dataset_id, path, n_examples, n_pairs, source_query)"
        " VALUES ('d1', 'x', 1, 0, 'q')"
    )
    con.execute("INSERT INTO dataset_examples VALUES ('d1', ?, false)", [trained])
    for i in range(5):
        con.execute(
            "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, detail, received_at)"
            f" VALUES ('t', 0, ?, 'not_json', 'x', now() - INTERVAL '{5 - i} hours')",
            [100 + i],
        )
    capped = RetentionCutoffs(30, 14, 30, max_events=3, max_dead_letters=2)

    aged = age_out(con, capped)

    ids = {r[0] for r in con.execute("SELECT id FROM events").fetchall()}
    assert ids == {"e3", "e4", "e5", "trained"}
    assert all(rows(con, t, "e0") == 0 for t in DERIVED)
    assert aged.deleted["events"] == 3 and aged.deleted["dead_letters"] == 3
    kept = sorted(r[0] for r in con.execute("SELECT kafka_offset FROM dead_letters").fetchall())
    assert kept == [103, 104]
    assert age_out(con, capped).total == 0, "a second pass finds nothing more"


def test_the_space_of_aged_out_rows_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "b.duckdb"
    buffer = DuckDBBuffer(path)
    con = buffer.cursor()

    def old_dead_letters(first: int) -> None:
        # Random bytes, a different value on every row: DuckDB compresses anything else to nothing.
        con.executemany(
            "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, detail, raw,"
            " received_at) VALUES ('t', 0, ?, 'oversized', 'big', ?, now() - INTERVAL 30 DAY)",
            [[first + i, os.urandom(200_000)] for i in range(100)],
        )
        con.execute("CHECKPOINT")

    old_dead_letters(0)
    size_full = path.stat().st_size
    assert size_full > 20_000_000, "the rows really take space"
    assert age_out(con, CUTOFFS).deleted == {"dead_letters": 100}
    old_dead_letters(100)  # the same volume again lands in the freed blocks
    assert path.stat().st_size < size_full * 1.25, (size_full, path.stat().st_size)
    buffer.close()
