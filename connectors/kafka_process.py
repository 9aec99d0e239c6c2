"""The Kafka consumer in a child process: kafka-python's record parsing on one core, evolvd's
validation and buffer writes on the other.

Parsing fetch responses is pure Python inside kafka-python and takes as much CPU per message as all
of evolvd's own work; in one process the two share the GIL and ingest leaves a core idle (the rates:
bench/ingest.py, bench/README.md). Here the child runs the ordinary `KafkaSource` and ships each
poll's values to the daemon as plain columns over a pipe.

Exactly-once is unchanged: the buffer stays the only record of positions. On every rebalance the
child asks the daemon to make everything it sent durable and to return the buffer's offsets, and
seeks to them; Kafka commits stay informational. Whatever was in the pipe when either side stopped
is simply read again from the stored offsets.

Protocol (tuples over one duplex pipe). Child → daemon: ("ready",) | ("failed", reason) once at
start, then ("records", generation, chunks, highwaters) | ("idle", highwaters) | ("rebalance",).
Daemon → child: ("offsets", stored) in answer to ("rebalance",), and ("pause",) |
("resume", generation, positions) | ("ack", positions) | ("close",) at any time.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, NoReturn

from evolvd.abc import PartitionLag, Source, SourceRecord
from evolvd.config import FetcherKind, KafkaConfig
from evolvd.connectors.kafka_source import (
    KafkaSource,
    KafkaUnavailableError,
    StoredOffsets,
    partition_lags,
)
from evolvd.logs import configure_logging

logger = logging.getLogger("evolvd.kafka")

Highwaters = dict[tuple[str, int], int | None]
Chunk = tuple[str, int, list[int], list[int | None], list[bytes | None]]
"""One partition's records of one poll: topic, partition, offsets, timestamps, values."""

_STARTUP_GRACE_S = 60.0
"""Beyond the broker connect timeout: a spawned interpreter imports kafka-python and evolvd first,
which takes seconds on a loaded 2-core machine."""
_CLOSE_TIMEOUT_S = 30.0
_CHILD_POLL_MS = 200
"""The child's longest kafka poll: how quickly it sees a pause, a close or its parent's death."""
_IDLE_REPORT_S = 1.0
_PARENT_GONE = (BrokenPipeError, EOFError, ConnectionResetError)


def open_kafka_source(
    fetcher: FetcherKind,
    config: KafkaConfig,
    bootstrap_servers: str,
    stored_offsets: StoredOffsets,
    before_rebalance: Callable[[], None],
    max_poll_records: int,
    log_level: str = "INFO",
    log_format: str = "text",
) -> KafkaSource | KafkaProcessSource:
    """The source `ingest.fetcher` names: the consumer in a child process, or in the calling thread."""
    if fetcher == "thread":
        return KafkaSource(config, bootstrap_servers, stored_offsets, before_rebalance, max_poll_records)
    return KafkaProcessSource(
        config, bootstrap_servers, stored_offsets, before_rebalance, max_poll_records, log_level, log_format
    )


class FetcherExitedError(RuntimeError):
    """The fetcher process died; the ingest loop ends and the daemon restarts it."""


class FetchedRecord(NamedTuple):
    """One record as the fetcher shipped it (a SourceRecord; a tuple is the cheapest to build)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    value: bytes | None


class KafkaProcessSource(Source):
    """A `Source` whose Kafka consumer runs in a child process. Use it from one thread."""

    def __init__(
        self,
        config: KafkaConfig,
        bootstrap_servers: str,
        stored_offsets: StoredOffsets,
        before_rebalance: Callable[[], None],
        max_poll_records: int = 2000,
        log_level: str = "INFO",
        log_format: str = "text",
    ) -> None:
        """Starts the child and waits until its consumer exists; raises KafkaUnavailableError as
        `KafkaSource` does when no broker answers. `before_rebalance` must make every batch handed
        out so far durable (drain the writer)."""
        self._config = config
        self._stored_offsets = stored_offsets
        self._before_rebalance = before_rebalance
        self._paused = False
        self._highwaters: Highwaters = {}
        self._generation = 0
        self._resume_at: dict[tuple[str, int], int] = {}
        """(topic, partition) → the offset after the last record handed out (or the first dropped)."""
        # spawn, not fork: the daemon is multi-threaded, and a forked copy of its locks can deadlock.
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        self._process = context.Process(
            target=run_fetcher,
            args=(child_conn, config, bootstrap_servers, max_poll_records, log_level, log_format),
            name="evolvd-kafka-fetcher",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self._wait_until_started(config.connect_timeout_s + _STARTUP_GRACE_S)
        # Receiving on its own thread keeps the pipe drained while the loop decodes the previous poll,
        # so the child's parsing and the daemon's validation overlap instead of taking turns.
        self._inbox: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=4)
        threading.Thread(target=self._receive, name="evolvd-kafka-receiver", daemon=True).start()
        logger.info("Kafka fetcher process started (pid %d)", self._process.pid)

    def _wait_until_started(self, timeout_s: float) -> None:
        message: tuple[Any, ...] | None = None
        try:
            # The sentinel too: a child that dies before it gets to the pipe never closes it.
            if self._conn in multiprocessing.connection.wait([self._conn, self._process.sentinel], timeout_s):
                message = self._conn.recv()
        except (EOFError, OSError):
            message = None
        if message == ("ready",):
            return
        self._process.join(timeout=0.5)  # a child that is exiting: read its exit code below
        exited = self._process.exitcode
        self._stop_process()
        if message is not None and message[0] == "failed":
            raise KafkaUnavailableError(message[1])
        if exited is not None:
            raise KafkaUnavailableError(
                f"the Kafka fetcher process exited with code {exited} before it was ready"
                " (its error is in the log above)"
            )
        raise KafkaUnavailableError(f"the Kafka fetcher process was not ready within {timeout_s:g}s")

    def _receive(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self._inbox.put(("exited",))
                return
            self._inbox.put(message)

    # -- Source ------------------------------------------------------------------------------

    def next_batch(self, max_records: int, timeout_ms: int) -> Sequence[Sequence[SourceRecord]]:
        """The next poll's records. `max_records` is the child's, fixed at start (max_poll_records)."""
        try:
            message = self._inbox.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return []
        kind = message[0]
        if kind == "records":
            _, generation, chunks, self._highwaters = message
            if self._paused or generation != self._generation:
                self._drop(chunks)
                return []
            for topic, partition, offsets, _, _ in chunks:
                self._resume_at[(topic, partition)] = offsets[-1] + 1
            return [
                [FetchedRecord(topic, partition, *row) for row in zip(offsets, stamps, values, strict=True)]
                for topic, partition, offsets, stamps, values in chunks
            ]
        if kind == "idle":
            self._highwaters = message[1]
        elif kind == "rebalance":
            self._answer_rebalance()
        elif kind == "exited":
            self._process.join(timeout=5)
            self._inbox.put(message)  # every later call reports it too
            raise FetcherExitedError(f"the Kafka fetcher process exited (code {self._process.exitcode})")
        return []

    def _answer_rebalance(self) -> None:
        # Every record the child sent before asking has been handed out by an earlier call (the
        # pipe is ordered), so draining the writer makes all of it durable; the stored offsets are
        # then exactly where the buffer ends.
        self._before_rebalance()
        self._resume_at.clear()  # the child now seeks to the stored offsets, which are the truth
        self._send(("offsets", dict(self._stored_offsets())))

    def _drop(self, chunks: list[Chunk]) -> None:
        """Records that arrive while paused are not handed out (the backlog limit holds to one
        batch, as in-process); the child seeks back to them when fetching resumes."""
        for topic, partition, offsets, _, _ in chunks:
            self._resume_at.setdefault((topic, partition), offsets[0])

    def pause(self) -> None:
        self._paused = True
        self._send(("pause",))

    def resume(self) -> None:
        # A new generation: records the child sent under the old one (fetched before it saw the
        # pause) are dropped on arrival, and it re-reads from where the handed-out records end.
        self._paused = False
        self._generation += 1
        self._send(("resume", self._generation, dict(self._resume_at)))

    @property
    def paused(self) -> bool:
        return self._paused

    def acknowledge(self, positions: Mapping[tuple[str, int], int]) -> None:
        self._send(("ack", dict(positions)))

    def lag(self) -> list[PartitionLag]:
        return partition_lags(self._highwaters, self._stored_offsets(), self._config.auto_offset_reset)

    def close(self) -> None:
        """Ask the child to leave the group and wait for it. Records still in the pipe are dropped
        unread: they are not in the buffer, so they are fetched again from the stored offsets."""
        self._send(("close",))
        deadline = time.monotonic() + _CLOSE_TIMEOUT_S
        # Keep the pipe flowing while waiting: a child blocked sending a poll, or waiting for its
        # rebalance answer, must get through to reading the close.
        while self._process.is_alive() and time.monotonic() < deadline:
            try:
                message = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if message[0] == "rebalance":
                self._answer_rebalance()
            elif message[0] == "exited":
                break
        self._process.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._process.is_alive():
            logger.error("the Kafka fetcher process did not close within %.0fs; killing it", _CLOSE_TIMEOUT_S)
        self._stop_process()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # the child is gone: the next call to next_batch reports it
            self._conn.send(message)

    def _stop_process(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)
        self._conn.close()


# -- the child process -------------------------------------------------------------------------


class _Fetcher:
    """The child's side: a KafkaSource whose positions come from the daemon."""

    def __init__(self, conn: Connection, parent_pid: int) -> None:
        self._conn = conn
        self._parent_pid = parent_pid
        self._stored: dict[int, int] = {}
        self._pending: list[tuple[Any, ...]] = []
        self.closing = False
        self.generation = 0
        self.source: KafkaSource | None = None
        # Sending on its own thread: a large poll's write blocks until the daemon reads it, and
        # meanwhile the next fetch can be parsed. One queue keeps every message in order.
        self._outbox: queue.Queue[tuple[Any, ...]] = queue.Queue(maxsize=2)
        threading.Thread(target=self._send_all, name="evolvd-fetcher-sender", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def _send_all(self) -> None:
        while True:
            message = self._outbox.get()
            try:
                self._conn.send(message)
            except _PARENT_GONE:
                _exit_orphaned()

    def rebalance(self) -> None:
        """Called inside a poll on every revoke and assign: wait for the daemon's durable offsets.
        Other messages that arrive meanwhile are applied after the poll, outside the callback."""
        try:
            self.send(("rebalance",))  # after every poll already queued: the daemon drains those first
            while (message := self._conn.recv())[0] != "offsets":
                self._pending.append(message)
        except _PARENT_GONE:
            _exit_orphaned()
        self._stored = message[1]

    def stored_offsets(self) -> dict[int, int]:
        return self._stored

    def parent_alive(self) -> bool:
        return os.getppid() == self._parent_pid

    def apply_control(self) -> None:
        while self._conn.poll(0):
            self._pending.append(self._conn.recv())
        pending, self._pending = self._pending, []
        assert self.source is not None
        for message in pending:
            kind = message[0]
            if kind == "pause":
                self.source.pause()
            elif kind == "resume":
                _, self.generation, positions = message
                self.source.resume_at(positions)
            elif kind == "ack":
                self.source.acknowledge(message[1])
            elif kind == "close":
                self.closing = True


def run_fetcher(
    conn: Connection,
    config: KafkaConfig,
    bootstrap_servers: str,
    max_poll_records: int,
    log_level: str,
    log_format: str,
) -> None:
    """The child process's main: poll, ship columns, obey the daemon, leave the group on close."""
    # Ctrl-C reaches the whole process group and systemd may signal every process of the unit:
    # only the daemon decides when the fetcher stops, so that it stops after the last write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, "json" if log_format == "json" else "text")
    fetcher = _Fetcher(conn, os.getppid())
    try:
        fetcher.source = KafkaSource(
            config, bootstrap_servers, fetcher.stored_offsets, fetcher.rebalance, max_poll_records
        )
    except KafkaUnavailableError as exc:
        conn.send(("failed", str(exc)))
        return
    conn.send(("ready",))
    source = fetcher.source
    idle_reported = 0.0
    try:
        while not fetcher.closing:
            if not fetcher.parent_alive():
                _exit_orphaned()
            chunks = source.next_batch(max_poll_records, _CHILD_POLL_MS)
            if chunks:
                columns = [_columns(chunk) for chunk in chunks]
                fetcher.send(("records", fetcher.generation, columns, source.highwaters()))
            elif time.monotonic() - idle_reported >= _IDLE_REPORT_S:
                fetcher.send(("idle", source.highwaters()))
                idle_reported = time.monotonic()
            fetcher.apply_control()
    except _PARENT_GONE:
        _exit_orphaned()
    source.close()  # the daemon asked: commit, leave the group


def _exit_orphaned() -> NoReturn:
    """The daemon died without closing its fetcher (kill -9, OOM): go the same way at once, without
    leaving the group - its session times out as the daemon's own consumer's would have. A clean
    leave from a dead daemon would change nothing for the buffer, and the embedded broker can wedge
    a group that a member leaves while it is still forming (SyncGroup error 27 from then on)."""
    logger.warning("the daemon is gone: the Kafka fetcher exits without leaving the group")
    os._exit(0)


def _columns(chunk: Sequence[SourceRecord]) -> Chunk:
    first = chunk[0]
    return (
        first.topic,
        first.partition,
        [r.offset for r in chunk],
        [r.timestamp for r in chunk],
        [r.value for r in chunk],
    )
