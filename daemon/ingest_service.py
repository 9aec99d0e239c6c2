"""Ingest as a part of the daemon: one thread that runs the ingest loop and, when the loop fails (its
Kafka fetcher process died, the broker went away), builds a new one and runs it again with backoff.

The loop has no health signal of its own, so a run of `HEALTHY_AFTER_S` without failing counts as
healthy: a failure days after the last one starts again from the shortest wait.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

from evolvd.config import IngestConfig
from evolvd.ingest import IngestState, WriterStall
from evolvd.metrics import IngestMetrics
from evolvd.restart_backoff import RestartBackoff
from evolvd.status_models import IngestStatus, PartitionStatus, WriterStatus

logger = logging.getLogger("evolvd.daemon")

FIRST_RESTART_S = 1.0
MAX_RESTART_S = 60.0
HEALTHY_AFTER_S = 60.0
JOIN_TIMEOUT_S = 30.0


class IngestStartError(RuntimeError):
    """The ingest loop could not be built (e.g. Kafka unreachable); the message says why."""


class IngestRun(Protocol):
    """One ingest loop (evolvd.ingest.IngestLoop): runs until `stop` is set, or fails."""

    state: IngestState

    @property
    def writer_stall(self) -> WriterStall: ...

    def run(self, stop: threading.Event) -> None: ...


class IngestService:
    name = "ingest"

    def __init__(
        self,
        new_loop: Callable[[], IngestRun],
        config: IngestConfig,
        metrics: IngestMetrics,
        stopping: threading.Event,
        fetcher_pid: Callable[[], int | None],
        backoff: RestartBackoff | None = None,
    ) -> None:
        """`new_loop` builds an ingest loop on a fresh Kafka source (raising IngestStartError when it
        cannot); `stopping` is the daemon's stop event; `fetcher_pid` names the current loop's Kafka
        fetcher process, if it has one (`ingest.fetcher: process`)."""
        self._new_loop = new_loop
        self._config = config
        self._metrics = metrics
        self._stopping = stopping
        self._fetcher_pid = fetcher_pid
        self._backoff = backoff or RestartBackoff(FIRST_RESTART_S, MAX_RESTART_S, HEALTHY_AFTER_S)
        self._loop: IngestRun | None = None
        """The loop now running; None only before the first one is built (start() builds it)."""
        self._thread = threading.Thread(target=self._supervise, name="evolvd-ingest", daemon=True)
        self.restarts = 0
        self.last_error: str | None = None

    def start(self) -> None:
        """Build the first loop here, so a start that cannot reach Kafka fails the daemon's startup."""
        self._loop = self._new_loop()
        self._thread.start()

    def stop(self) -> None:
        """The daemon's stop event is already set: wait for the batch in hand to be written."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=JOIN_TIMEOUT_S)
        if self.alive:
            logger.error(
                "ingest did not stop within %.0fs; exiting anyway (the buffer stays consistent)",
                JOIN_TIMEOUT_S,
            )

    @property
    def alive(self) -> bool:
        """Whether the ingest thread still runs (the buffer must not be closed under it)."""
        return self._thread.is_alive()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            loop = self._loop
            if loop is not None:
                self._run(loop)
            if self._stopping.is_set():
                return
            self.restarts += 1
            self._metrics.restarts.inc()
            delay = self._backoff.next_delay()
            logger.error(
                "ingest stopped unexpectedly; restarting in %.0fs (restart %d)", delay, self.restarts
            )
            if self._stopping.wait(delay):
                return
            try:
                self._loop = self._new_loop()
            except IngestStartError as exc:
                self._loop = None
                self.last_error = str(exc)
                logger.error("ingest restart failed: %s", exc)

    def _run(self, loop: IngestRun) -> None:
        """One loop's life: it returns when asked to stop, or ends with its reason recorded."""
        try:
            loop.run(self._stopping)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("ingest failed: %s", self.last_error)

    # -- what /status and readiness show ---------------------------------------------------------

    def unready_reason(self) -> str | None:
        loop = self._loop
        if loop is None or not loop.state.running:
            return "ingest is not running"
        return loop.writer_stall.unready_reason()

    def status_sections(self) -> dict[str, IngestStatus]:
        loop = self._loop
        state = loop.state if loop is not None else None
        partitions = [
            PartitionStatus(
                topic=p.topic,
                partition=p.partition,
                buffer_offset=p.position,
                highwater=p.highwater,
                lag=p.lag,
            )
            for p in (state.partitions if state else [])
        ]
        stall = loop.writer_stall if loop is not None else None
        writer = (
            WriterStatus(
                failing_s=round(stall.seconds(), 1), attempts=stall.attempts, last_error=stall.last_error
            )
            if stall is not None
            else WriterStatus(failing_s=0.0, attempts=0, last_error=None)
        )
        return {
            self.name: IngestStatus.model_validate(
                {
                    "running": bool(state and state.running),
                    "paused_by_backpressure": bool(state and state.paused),
                    "backlog": state.backlog if state else None,
                    "backlog_high_watermark": self._config.backlog_high_watermark,
                    "restarts": self.restarts,
                    "last_error": self.last_error,
                    "writer": writer,
                    "fetcher_pid": self._fetcher_pid(),
                    "lag_total": sum(p.lag or 0 for p in partitions),
                    "partitions": partitions,
                    "group_ahead": [asdict(a) for a in (state.group_ahead if state else [])],
                }
            )
        }
