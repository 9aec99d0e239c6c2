"""The interfaces between evolvd's parts, on one screen.

The ingest loop only knows a `Source` and an `IngestSink`; swapping Kafka for another log, or the
single-writer DuckDB buffer for a distributed one, stays local to the implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa


class SourceRecord(Protocol):
    """One message as the log delivered it, before any validation.

    A Protocol, so kafka-python's own ConsumerRecord passes through without a copy per message.
    """

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int | None:
        """Broker timestamp in epoch milliseconds."""


@dataclass(frozen=True, slots=True)
class Record:
    """A plain SourceRecord, for fakes and tests."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    position: int | None
    """Next offset this member will read (None before the first fetch)."""
    highwater: int | None
    """The broker's end of the partition, as last seen (None before the first fetch)."""

    @property
    def lag(self) -> int | None:
        if self.position is None or self.highwater is None:
            return None
        return max(0, self.highwater - self.position)


@dataclass(frozen=True, slots=True)
class PartitionAhead:
    """A partition whose consumer-group offset is past the buffer's (connectors.group_offsets)."""

    partition: int
    group_offset: int
    """What the consumer group committed."""
    buffer_offset: int | None
    """What this buffer holds (None: it never stored the partition)."""


class Source(ABC):
    """A partitioned, replayable log the daemon consumes (Kafka, in production)."""

    @abstractmethod
    def next_batch(self, max_records: int, timeout_ms: int) -> Sequence[Sequence[SourceRecord]]:
        """Up to `max_records` records in chunks, each chunk from one partition in offset order,
        waiting at most `timeout_ms`; empty when none arrived."""

    @abstractmethod
    def pause(self) -> None:
        """Stop fetching (membership and heartbeats go on)."""

    @abstractmethod
    def resume(self) -> None: ...

    @property
    @abstractmethod
    def paused(self) -> bool: ...

    @abstractmethod
    def lag(self) -> list[PartitionLag]:
        """Lag per assigned partition, from what the last fetches saw (no broker round trip)."""

    @abstractmethod
    def acknowledge(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Tell the log how far the buffer has durably got (informational: the buffer is the truth)."""

    @abstractmethod
    def close(self) -> None: ...


class Publisher(ABC):
    """The log's outbound side: publishes messages to one topic (Kafka, in production). The gateway's
    capture, the demo workload and `evolvd produce` write through it."""

    @abstractmethod
    def publish(self, value: bytes, key: bytes | None) -> None:
        """Queue one message (thread-safe); `key` picks its partition."""

    @abstractmethod
    def flush(self, timeout_s: float | None = None) -> None: ...

    @abstractmethod
    def close(self, timeout_s: float | None = None) -> None:
        """Flush what is queued, then release the connection."""


@dataclass(slots=True)
class EventColumns:
    """The valid prompts of one batch, column by column.

    The ingest hot path appends to these lists instead of building an object per event: at ~100k
    messages/s an allocation per message is a visible share of the budget. Derived columns (prompt
    hash, timestamps) are computed by the buffer when it writes.
    """

    id: list[str] = field(default_factory=list)
    topic: list[str] = field(default_factory=list)
    partition: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    prompt: list[str | None] = field(default_factory=list)
    messages_json: list[str | None] = field(default_factory=list)
    response: list[str | None] = field(default_factory=list)
    metadata_json: list[str | None] = field(default_factory=list)
    ts_epoch_s: list[float | None] = field(default_factory=list)
    kafka_ts_ms: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.id)

    def to_arrow(self) -> pa.Table:
        """One Arrow table for the batch, built on the thread that decoded it.

        Building it here rather than on the writer thread matters: every GIL hand-off between the
        two threads costs far more than the conversion itself.
        """
        return pa.Table.from_arrays(
            [pa.array(getattr(self, name), type_) for name, type_ in _EVENT_ARROW_TYPES],
            names=[name for name, _ in _EVENT_ARROW_TYPES],
        )


_EVENT_ARROW_TYPES = (
    ("id", pa.string()),
    ("topic", pa.string()),
    ("partition", pa.int32()),
    ("offset", pa.int64()),
    ("prompt", pa.string()),
    ("messages_json", pa.string()),
    ("response", pa.string()),
    ("metadata_json", pa.string()),
    ("ts_epoch_s", pa.float64()),
    ("kafka_ts_ms", pa.int64()),
)


@dataclass(frozen=True, slots=True)
class Feedback:
    event_id: str
    value: float
    raw: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    raw: bytes | None
    """The value as received, or a bounded prefix of it (None for a tombstone)."""
    raw_bytes: int | None = None
    """The full value's length, when `raw` was cut to a prefix or taken whole."""
    raw_sha256: str | None = None


@dataclass(slots=True)
class IngestBatch:
    """What one poll turned into, written to the buffer in one transaction."""

    events: EventColumns = field(default_factory=EventColumns)
    """Filled while decoding; sealed into `event_tables` before the batch is handed to the writer."""
    event_tables: list[pa.Table] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) → the offset after the last record of the batch."""

    def seal(self) -> IngestBatch:
        """Freeze the decoded events into Arrow; call once decoding is done, on the decoding thread."""
        if len(self.events):
            self.event_tables.append(self.events.to_arrow())
            self.events = EventColumns()
        return self

    @property
    def event_count(self) -> int:
        return sum(t.num_rows for t in self.event_tables)

    def merge(self, later: IngestBatch) -> None:
        """Append a later sealed batch (group commit: one transaction for several polls)."""
        self.event_tables.extend(later.event_tables)
        self.feedback.extend(later.feedback)
        self.dead_letters.extend(later.dead_letters)
        self.next_offsets.update(later.next_offsets)


@dataclass(frozen=True, slots=True)
class IngestResult:
    inserted: int
    duplicates: int


class IngestSink(ABC):
    """Where ingest writes: must store a batch and its offsets atomically."""

    @abstractmethod
    def write_ingest_batch(self, batch: IngestBatch) -> IngestResult: ...

    @abstractmethod
    def probe_ingest_batch(self, batch: IngestBatch) -> None:
        """Try the write of `batch` and undo it: raises exactly when `write_ingest_batch` would.
        The writer bisects a failing batch with it to find the records the sink refuses."""

    @abstractmethod
    def stored_offsets(self, topic: str) -> dict[int, int]:
        """partition → the next offset to read, for every partition the sink has seen."""

    @abstractmethod
    def backlog(self) -> int:
        """Events waiting for the labeler."""
