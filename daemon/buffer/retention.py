"""Ageing rows out of the buffer: events with everything derived from them, and dead letters.

Without it the buffer grows with every message for ever. What goes, once older than its cutoff, or
beyond the newest `max_events` / `max_dead_letters` (retention by size):
- an event (by `ingested_at`) with its feedback, samples, label, critiques, refinements, preference
  pairs, training examples and their safety decisions - unless a snapshot took one of its training
  examples or pairs: those events are lineage (`evolvd adapters show` walks from an adapter to the
  Kafka offsets it learned from) and stay as long as the datasets rows do;
- a dead letter (by `received_at`);
- a job run (by `started_at`).
What stays: the Kafka offsets (the buffer's position), datasets, runs, adapters, evaluations, swaps,
canaries and policy audit rows other than per-example safety decisions (few rows, the audit trail).

All deletions happen in one transaction, on either backend. On DuckDB a CHECKPOINT then writes them
to the file so the space is reused (DuckDB frees it at checkpoints, not at DELETE). A checkpoint cannot
run while another connection has a transaction open (ingest writes all the time): it is then left to
DuckDB's own automatic checkpoint, and the result says so. PostgreSQL's autovacuum reclaims the space
of deleted rows by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from evolvd.buffer.duckdb_buffer import transaction
from evolvd.buffer.sql import PostgresSql, Sql, affected_rows

DAY_S = 86_400


@dataclass(frozen=True)
class AgedOut:
    deleted: dict[str, int]
    """Rows deleted per table (tables with none left out)."""
    checkpoint_deferred: bool
    """DuckDB could not checkpoint now (a write was in progress): its own automatic one frees the space."""

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@dataclass(frozen=True)
class RetentionCutoffs:
    events_days: float
    dead_letters_days: float
    job_runs_days: float
    max_events: int | None = None
    """Keep at most this many events (the newest), besides those lineage keeps; None: no cap."""
    max_dead_letters: int | None = None
    """Keep at most this many dead letters (the newest); None: no cap."""


# The event ids to delete: old (or beyond the cap, `_BEYOND_EVENTS_CAP`), and with nothing a snapshot
# took. The cap's clause sorts every event, so it is added only when a cap is set.
_DOOMED_EVENTS = """
INSERT INTO retention_doomed
SELECT e.id FROM events e
WHERE (e.ingested_at < now() - to_seconds(?) {beyond_cap})
  AND NOT EXISTS (
      SELECT 1 FROM training_examples t JOIN dataset_examples d ON d.example_id = t.example_id
      WHERE t.event_id = e.id)
  AND NOT EXISTS (
      SELECT 1 FROM preference_pairs p JOIN dataset_pairs d ON d.pair_id = p.pair_id
      WHERE p.event_id = e.id)
"""
_BEYOND_EVENTS_CAP = (
    "OR e.id IN (SELECT id FROM events ORDER BY ingested_at DESC, kafka_partition DESC, kafka_offset DESC"
    " OFFSET ?)"
)
_OLD_DEAD_LETTERS = "DELETE FROM dead_letters WHERE received_at < now() - to_seconds(?)"
_BEYOND_DEAD_LETTERS_CAP = (
    " OR dead_letter_id IN (SELECT dead_letter_id FROM dead_letters"
    " ORDER BY received_at DESC, dead_letter_id DESC OFFSET ?)"
)

# Children before parents; the safety decisions name their example by id.
_EVENT_DELETES = {
    "policy_decisions": (
        "DELETE FROM policy_decisions WHERE subject_kind = 'example' AND subject_id IN ("
        " SELECT CAST(t.example_id AS VARCHAR) FROM training_examples t"
        " WHERE t.event_id IN (SELECT id FROM retention_doomed))"
    ),
    "training_examples": "DELETE FROM training_examples WHERE event_id IN (SELECT id FROM retention_doomed)",
    "preference_pairs": "DELETE FROM preference_pairs WHERE event_id IN (SELECT id FROM retention_doomed)",
    "refinements": "DELETE FROM refinements WHERE event_id IN (SELECT id FROM retention_doomed)",
    "critiques": "DELETE FROM critiques WHERE event_id IN (SELECT id FROM retention_doomed)",
    "labels": "DELETE FROM labels WHERE event_id IN (SELECT id FROM retention_doomed)",
    "samples": "DELETE FROM samples WHERE event_id IN (SELECT id FROM retention_doomed)",
    "feedback": "DELETE FROM feedback WHERE event_id IN (SELECT id FROM retention_doomed)",
    "events": "DELETE FROM events WHERE id IN (SELECT id FROM retention_doomed)",
}


def age_out(con: Sql, cutoffs: RetentionCutoffs) -> AgedOut:
    """Delete what is past its cutoff, in one transaction, then checkpoint."""
    deleted: dict[str, int] = {}
    with transaction(con):
        # Created and dropped inside the transaction: a failed run leaves no table behind.
        con.execute("CREATE TEMP TABLE retention_doomed (id VARCHAR PRIMARY KEY)")
        capped = cutoffs.max_events is not None
        con.execute(
            _DOOMED_EVENTS.format(beyond_cap=_BEYOND_EVENTS_CAP if capped else ""),
            [cutoffs.events_days * DAY_S, *([cutoffs.max_events] if capped else [])],
        )
        for table, sql in _EVENT_DELETES.items():
            deleted[table] = affected_rows(con, sql)
        con.execute("DROP TABLE retention_doomed")
        capped = cutoffs.max_dead_letters is not None
        deleted["dead_letters"] = affected_rows(
            con,
            _OLD_DEAD_LETTERS + (_BEYOND_DEAD_LETTERS_CAP if capped else ""),
            [cutoffs.dead_letters_days * DAY_S, *([cutoffs.max_dead_letters] if capped else [])],
        )
        deleted["job_runs"] = affected_rows(
            con,
            "DELETE FROM job_runs WHERE started_at < now() - to_seconds(?)",
            [cutoffs.job_runs_days * DAY_S],
        )
    return AgedOut({table: n for table, n in deleted.items() if n}, not _checkpoint(con))


def _checkpoint(con: Sql) -> bool:
    """False when DuckDB could not write the deletions to its file now (PostgreSQL needs no checkpoint:
    autovacuum reclaims the space)."""
    if isinstance(con, PostgresSql):
        return True
    try:
        con.execute("CHECKPOINT")
    except duckdb.Error:
        return False
    return True
