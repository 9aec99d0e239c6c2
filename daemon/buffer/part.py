"""The buffer as a part of the daemon: the open file, its Prometheus collector, and its /status sections.

The file is opened when the part is built (every other part is built around it); it is closed last,
and only once nothing writes to it any more (an ingest thread that did not stop keeps it open)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from evolvd.buffer.duckdb_buffer import DuckDBBuffer
from evolvd.metrics import BufferCollector
from evolvd.status_models import BufferStatus, DeadLetterStatus

logger = logging.getLogger("evolvd.daemon")


class BufferPart:
    name = "buffer"

    def __init__(self, path: Path, threads: int, registry: CollectorRegistry) -> None:
        """Opens the file: BufferLockedError when another daemon holds it, SchemaTooNewError when a newer
        evolvd migrated it."""
        self.path = path
        self.buffer = DuckDBBuffer(path, threads)
        self._registry = registry
        self._collector = BufferCollector(self.buffer.table_counts, self.buffer.backlog, path)
        self._writers: list[Callable[[], bool]] = []

    def keep_open_while(self, writing: Callable[[], bool]) -> None:
        """`writing()` true at close time (an ingest thread that did not stop) keeps the file open."""
        self._writers.append(writing)

    def start(self) -> None:
        self._registry.register(self._collector)

    def stop(self) -> None:
        # Not registered when the daemon stopped before the buffer part started.
        with contextlib.suppress(KeyError):
            self._registry.unregister(self._collector)

    def close(self) -> None:
        """Close the file, last of all (the daemon registers this as soon as the file is open)."""
        if any(writing() for writing in self._writers):
            logger.error("the buffer stays open: a writer did not stop (its transactions keep it consistent)")
            return
        self.buffer.close()

    def status_sections(self) -> dict[str, BufferStatus | DeadLetterStatus]:
        buffer = self.buffer
        dead = buffer.dead_letters_by_reason()
        return {
            "buffer": BufferStatus(
                path=str(self.path),
                schema_version=buffer.schema_version,
                tables=buffer.table_counts(),
                events_by_state=buffer.events_by_state(),
            ),
            "dead_letters": DeadLetterStatus(total=sum(dead.values()), by_reason=dead),
        }
