"""Find the records a sink refuses inside a failed ingest batch, so one bad record never stalls a batch.

The contract rejects what it can name, but a record can still pass it and be refused by the
buffer (a value the database cannot represent). Retrying such a batch forever would stop every
partition behind it, and skipping it would lose the good records with it. Instead the writer
bisects: each half is written and rolled back (`IngestSink.probe_ingest_batch`) until every
refused record stands alone; the batch is then written once, in one transaction with its offsets,
with each refused record replaced by an `unstorable` dead letter that says what the buffer said.

When the buffer refuses even an empty write, no record is to blame (disk full, file gone): that
raises `SinkFailingError` and the writer retries the whole batch with backoff, showing the stall.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec
import pyarrow as pa

from evolvd.abc import DeadLetter, IngestBatch, IngestSink
from evolvd.contract import DeadLetterReason, dead_letter

_MAX_ERROR_CHARS = 1000


class SinkFailingError(RuntimeError):
    """The sink fails whatever is written: the cause is the sink, not a record."""


@dataclass(frozen=True, slots=True)
class _Unit:
    """One record of a batch: an event row, a feedback row or a dead letter, by its index."""

    kind: Literal["event", "feedback", "dead_letter"]
    index: int


def isolate_unstorable(sink: IngestSink, batch: IngestBatch) -> tuple[IngestBatch, int]:
    """`batch` with each record the sink refuses replaced by an `unstorable` dead letter, and how
    many were replaced. Raises SinkFailingError when the failure is not down to any record."""
    offsets_only = IngestBatch(next_offsets=dict(batch.next_offsets))
    error = _probe(sink, offsets_only)
    if error is not None:
        raise SinkFailingError(f"the buffer refuses even an empty write: {error}")
    events = _events_table(batch)
    units = (
        [_Unit("event", i) for i in range(events.num_rows)]
        + [_Unit("feedback", i) for i in range(len(batch.feedback))]
        + [_Unit("dead_letter", i) for i in range(len(batch.dead_letters))]
    )
    refused = _refused(units, lambda part: _probe(sink, _subset(events, batch, part)))
    if not refused:
        raise SinkFailingError("the batch fails as a whole, but each of its halves is stored")
    kept = _subset(events, batch, [u for u in units if u not in refused])
    kept.dead_letters.extend(_as_dead_letter(events, batch, unit, why) for unit, why in refused.items())
    kept.next_offsets = dict(batch.next_offsets)
    return kept, len(refused)


def _refused(units: list[_Unit], probe: Callable[[list[_Unit]], str | None]) -> dict[_Unit, str]:
    """Each unit the sink refuses on its own, with the sink's error; empty when `units` is stored."""
    error = probe(units)
    if error is None:
        return {}
    if len(units) == 1:
        return {units[0]: error}
    middle = len(units) // 2
    return _refused(units[:middle], probe) | _refused(units[middle:], probe)


def _probe(sink: IngestSink, batch: IngestBatch) -> str | None:
    try:
        sink.probe_ingest_batch(batch)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
    return None


def _events_table(batch: IngestBatch) -> pa.Table:
    tables = batch.event_tables
    if not tables:
        return pa.table({"id": pa.array([], pa.string())})
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _subset(events: pa.Table, batch: IngestBatch, units: list[_Unit]) -> IngestBatch:
    rows = [u.index for u in units if u.kind == "event"]
    return IngestBatch(
        event_tables=[events.take(rows)] if rows else [],
        feedback=[batch.feedback[u.index] for u in units if u.kind == "feedback"],
        dead_letters=[batch.dead_letters[u.index] for u in units if u.kind == "dead_letter"],
    )


def _as_dead_letter(events: pa.Table, batch: IngestBatch, unit: _Unit, error: str) -> DeadLetter:
    detail = f"the buffer refused this {unit.kind.replace('_', ' ')}: {error}"
    if unit.kind == "event":
        row = events.slice(unit.index, 1).to_pylist()[0]
        return dead_letter(
            row["topic"], row["partition"], row["offset"], DeadLetterReason.UNSTORABLE, detail, _json(row)
        )
    if unit.kind == "feedback":
        fb = batch.feedback[unit.index]
        return dead_letter(fb.topic, fb.partition, fb.offset, DeadLetterReason.UNSTORABLE, detail, _json(fb))
    # A dead letter the buffer refuses: keep its position and reason, lose only what was refused.
    dl = batch.dead_letters[unit.index]
    return dead_letter(
        dl.topic,
        dl.partition,
        dl.offset,
        DeadLetterReason.UNSTORABLE,
        f"{detail} (it was a {dl.reason} dead letter: {ascii(dl.detail)[:_MAX_ERROR_CHARS]})",
        dl.raw,
    )


def _json(value: object) -> bytes:
    """The refused record as JSON, so its dead letter shows what was sent."""
    return msgspec.json.encode(value, enc_hook=repr)
