"""The ingest loop: poll the source, validate, and hand batches to a writer that commits them.

Two threads so the second core is used: this one polls and decodes (Python, holds the GIL), the
writer commits to DuckDB (C++, releases it). Each transaction carries its partition offsets, so the
buffer's position only ever moves together with the events it covers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from evolvd.abc import IngestBatch, IngestSink, PartitionAhead, PartitionLag, Source
from evolvd.config import IngestConfig
from evolvd.contract import decode_into
from evolvd.ingest_bisect import isolate_unstorable
from evolvd.metrics import IngestMetrics

logger = logging.getLogger("evolvd.ingest")

MAX_GROUP_COMMIT = 16
"""At most this many polls are merged into one transaction."""
_GROUP_COMMIT_LINGER_S = 0.1
"""How long the writer waits for more polls before committing what it has (the ingest latency cost)."""

WRITER_STALL_UNREADY_S = 5.0
"""/readyz fails once the writer has failed this long on one batch: longer than a transient error's
first retries (0.1 + 0.2 + ... s), short enough that an orchestrator sees a buffer that is stuck."""

OnDurable = Callable[[Mapping[tuple[str, int], int], int], None]
"""Called with a written batch's next offsets and the number of events it was submitted with."""


@dataclass
class WriterStall:
    """Whether the writer is stuck on a batch the buffer keeps refusing; read by /readyz and /status."""

    failing_since: float | None = None
    """time.time() of the first failed attempt at the batch in hand; None while writes succeed."""
    attempts: int = 0
    last_error: str | None = None
    """The latest write error, kept after recovery so that /status can still show it."""

    def seconds(self) -> float:
        since = self.failing_since
        return 0.0 if since is None else max(0.0, time.time() - since)

    def unready_reason(self) -> str | None:
        """Why the daemon is not ready, while the writer has been stuck past the grace period."""
        failing_s = self.seconds()
        if failing_s < WRITER_STALL_UNREADY_S:
            return None
        return (
            f"the ingest writer cannot write to the buffer: {self.attempts} attempts failed in "
            f"{failing_s:.0f}s, the last with {self.last_error}"
        )


class BatchWriter:
    """Commits ingest batches on its own thread; a full queue makes the poller wait (bounded memory)."""

    def __init__(self, sink: IngestSink, metrics: IngestMetrics, on_durable: OnDurable) -> None:
        self._writer = IngestWriter(sink, metrics, on_durable)
        self._queue: queue.Queue[IngestBatch | None] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="evolvd-ingest-writer", daemon=True)
        self._thread.start()

    def submit(self, batch: IngestBatch) -> None:
        self._queue.put(batch)

    def drain(self) -> None:
        """Return once every batch submitted so far is committed."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def stall(self) -> WriterStall:
        return self._writer.stall

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = self._queue.get()
            if batch is None:
                self._queue.task_done()
                return
            merged = 1
            # Group commit: gather what arrives within the linger into one transaction. Fewer,
            # larger DuckDB calls mean fewer GIL hand-offs with the polling thread.
            deadline = time.monotonic() + _GROUP_COMMIT_LINGER_S
            while merged < MAX_GROUP_COMMIT:
                try:
                    later = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if later is None:
                    self._queue.task_done()
                    stopping = True
                    break
                batch.merge(later)
                merged += 1
            self._writer.write(batch)
            for _ in range(merged):
                self._queue.task_done()


class IngestWriter:
    """Writes one batch at a time to the sink, on the caller's thread, until it is durable."""

    def __init__(self, sink: IngestSink, metrics: IngestMetrics, on_durable: OnDurable) -> None:
        self._sink = sink
        self._metrics = metrics
        self._on_durable = on_durable
        self.stall = WriterStall()
        metrics.writer_failing_seconds.set_function(self.stall.seconds)

    def write(self, batch: IngestBatch) -> None:
        # Nothing may be lost, and the batch's records are not acknowledged anywhere until this
        # succeeds. A batch the buffer refuses is bisected: the records it refuses become dead
        # letters and the rest is written at once. Only a buffer that refuses everything (disk
        # full, file gone) is retried with backoff, and that shows as a stall in /readyz.
        submitted_events = batch.event_count
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                result = self._sink.write_ingest_batch(batch)
            except Exception as exc:
                self._metrics.write_errors.inc()
                self._note_failure(exc)
                try:
                    batch, refused = isolate_unstorable(self._sink, batch)
                except Exception:
                    logger.exception(
                        "writing %d events to the buffer failed; retrying in %.1fs (attempt %d)",
                        batch.event_count,
                        delay,
                        self.stall.attempts,
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                logger.error(
                    "the buffer refused %d record(s) of a batch (%s); they are dead letters "
                    "(reason unstorable), the other %d events are written",
                    refused,
                    self.stall.last_error,
                    batch.event_count,
                )
                continue
            self._metrics.write_seconds.observe(time.perf_counter() - started)
            break
        self.stall.failing_since, self.stall.attempts = None, 0
        m = self._metrics
        m.batches.inc()
        m.messages.labels("event").inc(result.inserted)
        m.messages.labels("duplicate").inc(result.duplicates)
        m.messages.labels("feedback").inc(len(batch.feedback))
        m.messages.labels("dead_letter").inc(len(batch.dead_letters))
        for dl in batch.dead_letters:
            m.dead_letters.labels(dl.reason).inc()
        self._on_durable(batch.next_offsets, submitted_events)

    def _note_failure(self, exc: Exception) -> None:
        stall = self.stall
        if stall.failing_since is None:
            stall.failing_since = time.time()
        stall.attempts += 1
        stall.last_error = f"{type(exc).__name__}: {exc}"[:1000]


@dataclass
class IngestState:
    """What /status shows about ingest; written by the ingest thread, read by the admin API."""

    running: bool = False
    paused: bool = False
    backlog: int = 0
    partitions: list[PartitionLag] = field(default_factory=list)
    group_ahead: list[PartitionAhead] = field(default_factory=list)
    """Partitions whose consumer-group offset is past the buffer's (another buffer consumes them)."""


class GroupCheck(Protocol):
    def check(self) -> list[PartitionAhead] | None: ...
    def close(self) -> None: ...


class IngestLoop:
    """Runs on its own thread until `stop` is set; then finishes the batch in hand and returns."""

    def __init__(
        self,
        source_factory: Callable[[Callable[[], None]], Source],
        sink: IngestSink,
        config: IngestConfig,
        metrics: IngestMetrics,
        group_check: GroupCheck | None = None,
    ) -> None:
        """`group_check`: compares the consumer group's offsets with the buffer's every
        `config.group_check_interval_s` (connectors.group_offsets)."""
        self._config = config
        self._metrics = metrics
        self._sink = sink
        self._group_check = group_check
        self._durable: dict[tuple[str, int], int] = {}
        self._durable_events = 0
        self._durable_lock = threading.Lock()
        self._submitted_events = 0
        self._writer = BatchWriter(sink, metrics, self._note_durable)
        try:
            self._source = source_factory(self._writer.drain)
        except BaseException:
            self._writer.close()  # no thread left behind when the source cannot be created
            raise
        self.state = IngestState()

    @property
    def writer_stall(self) -> WriterStall:
        return self._writer.stall

    def _note_durable(self, next_offsets: Mapping[tuple[str, int], int], events: int) -> None:
        with self._durable_lock:
            self._durable.update(next_offsets)
            self._durable_events += events

    def run(self, stop: threading.Event) -> None:
        self.state.running = True
        next_check = 0.0
        next_group_check = time.monotonic() + self._config.group_check_interval_s / 10
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_check:
                    self._housekeeping()
                    next_check = now + self._config.backlog_check_interval_s
                if self._group_check is not None and now >= next_group_check:
                    self._check_group()
                    next_group_check = now + self._config.group_check_interval_s
                chunks = self._source.next_batch(
                    self._config.batch_max_messages, self._config.poll_timeout_ms
                )
                if not chunks:
                    continue
                batch = IngestBatch()
                max_bytes = self._config.max_message_bytes
                for chunk in chunks:
                    for record in chunk:
                        decode_into(record, max_bytes, batch)
                    last = chunk[-1]
                    batch.next_offsets[(last.topic, last.partition)] = last.offset + 1
                self._writer.submit(batch.seal())
                self._admit(batch.event_count)
        finally:
            self.state.running = False
            self._writer.drain()
            self._acknowledge()
            self._writer.close()
            self._source.close()
            if self._group_check is not None:
                self._group_check.close()
            logger.info("ingest stopped; every polled message is in the buffer")

    def _check_group(self) -> None:
        assert self._group_check is not None
        ahead = self._group_check.check()
        if ahead is None:
            return
        if ahead and ahead != self.state.group_ahead:
            logger.error(
                "consumer group offsets are ahead of this buffer on partition(s) %s: another daemon "
                "with its own buffer consumes in this group (its share of the traffic never reaches "
                "this buffer, and messages both read are stored twice), or this buffer was restored "
                "from an older backup. Give each daemon its own kafka.group_id, or share one buffer",
                ", ".join(f"{a.partition} (group {a.group_offset}, buffer {a.buffer_offset})" for a in ahead),
            )
        self.state.group_ahead = ahead
        self._metrics.group_ahead.set(len(ahead))

    def _admit(self, events: int) -> None:
        """Count a submitted batch against the backlog at once, so a fast topic overshoots the
        limit by at most one batch rather than by everything that arrives between two checks."""
        self._submitted_events += events
        self.state.backlog += events
        self._apply_backpressure()

    def _apply_backpressure(self) -> None:
        cfg, backlog = self._config, self.state.backlog
        if not self._source.paused and backlog >= cfg.backlog_high_watermark:
            logger.warning(
                "backlog %d reached %d: pausing fetch until it falls to %d",
                backlog,
                cfg.backlog_high_watermark,
                cfg.backlog_low_watermark,
            )
            self._source.pause()
            self._metrics.backpressure_pauses.inc()
        elif self._source.paused and backlog <= cfg.backlog_low_watermark:
            logger.info("backlog %d is down to %d: resuming fetch", backlog, cfg.backlog_low_watermark)
            self._source.resume()
        self.state.paused = self._source.paused
        self._metrics.paused.set(1 if self._source.paused else 0)

    def _housekeeping(self) -> None:
        """Re-measure the backlog, acknowledge, update lag: cheap once a second, too dear per poll."""
        with self._durable_lock:
            in_flight = self._submitted_events - self._durable_events
        # Committed events waiting for the labeler, plus those the writer has not committed yet.
        self.state.backlog = self._sink.backlog() + in_flight
        self._apply_backpressure()
        self._acknowledge()
        self.state.partitions = self._source.lag()
        for p in self.state.partitions:
            if p.lag is not None:
                self._metrics.lag.labels(p.topic, str(p.partition)).set(p.lag)

    def _acknowledge(self) -> None:
        with self._durable_lock:
            durable, self._durable = self._durable, {}
        if durable:
            self._source.acknowledge(durable)
