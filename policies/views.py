"""What the policies read from the buffer: prompt windows, examples waiting for the safety screen,
and the candidate data set a training run would take."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from evolvd.buffer.heldout import heldout_params, untrained_condition
from evolvd.buffer.sql import Sql

# A chat message list has no single prompt string; its JSON text is what drift and clusters see.
_PROMPT = "coalesce(prompt, CAST(messages AS VARCHAR))"


def recent_prompts(con: Sql, window: int) -> list[str]:
    rows = con.execute(
        f"SELECT {_PROMPT} FROM events ORDER BY ingested_at DESC, kafka_offset DESC LIMIT ?",  # noqa: S608
        [window],
    ).fetchall()
    return [str(r[0]) for r in reversed(rows)]


def first_prompts(con: Sql, window: int) -> list[str]:
    rows = con.execute(
        f"SELECT {_PROMPT} FROM events ORDER BY ingested_at, kafka_offset LIMIT ?",  # noqa: S608
        [window],
    ).fetchall()
    return [str(r[0]) for r in rows]


def event_count(con: Sql) -> int:
    row = con.execute("SELECT count(*) FROM events").fetchone()
    return int(row[0]) if row else 0


def live_training_prompts(con: Sql, window: int) -> list[str] | None:
    """Prompts of the data set the live adapter was trained on, or None when there is none."""
    row = con.execute(
        "SELECT d.path FROM adapters a JOIN runs r ON a.run_id = r.run_id"
        " JOIN datasets d ON d.dataset_id = r.dataset_id WHERE a.status = 'live' LIMIT 1"
    ).fetchone()
    if row is None:
        return None
    # The data set is a Parquet file beside the buffer, whichever backend the buffer is: DuckDB reads
    # it in memory, a fixed pseudo-random sample (by hash) when it is larger than the window.
    with duckdb.connect() as parquet:
        rows = parquet.execute(
            "SELECT prompt FROM read_parquet(?) ORDER BY hash(prompt) LIMIT ?", [row[0], window]
        ).fetchall()
    return [str(r[0]) for r in rows]


_EXAMPLES = (
    "SELECT e.example_id, e.event_id, e.prompt, e.completion, e.confidence, e.safety_outcome, l.answer,"
    " l.greedy_share"
    " FROM training_examples e LEFT JOIN labels l ON l.event_id = e.event_id"
)


@dataclass(frozen=True)
class ExampleRow:
    example_id: int
    event_id: str
    prompt: str
    completion: str
    confidence: float
    safety_outcome: str | None
    answer: str | None
    """The voted label of the example's event, when one was extracted."""
    greedy_share: float | None = None
    """Share of the event's samples asserting the model's greedy answer (None: not asked)."""


def unscreened_examples(con: Sql, limit: int) -> list[ExampleRow]:
    return _examples(con, "WHERE e.safety_outcome IS NULL ORDER BY e.example_id LIMIT ?", [limit])


def all_examples(con: Sql) -> list[ExampleRow]:
    return _examples(con, "ORDER BY e.example_id", [])


def candidate_examples(con: Sql, heldout_percent: int = 0) -> list[ExampleRow]:
    """What the next run would train on: the snapshot's own rule (`untrained_condition`)."""
    return _examples(
        con, f"WHERE {untrained_condition('e')} ORDER BY e.example_id", heldout_params(con, heldout_percent)
    )


def _examples(con: Sql, tail: str, params: list[object]) -> list[ExampleRow]:
    # `tail` is one of this module's constant clauses; values go through `params`.
    query = _EXAMPLES + " " + tail
    rows = con.execute(
        query,
        params,
    ).fetchall()
    return [
        ExampleRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]), r[5], r[6], r[7]) for r in rows
    ]


def last_run_started(con: Sql) -> dt.datetime | None:
    row = con.execute("SELECT max(coalesce(started_at, created_at)) FROM runs").fetchone()
    return row[0] if row and row[0] is not None else None
