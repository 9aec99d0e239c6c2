"""The buffer as a part of the daemon: the open buffer (the DuckDB file, or the shared PostgreSQL
database), its Prometheus collector, and its /status sections.

The buffer is opened when the part is built (every other part is built around it); it is closed last,
and only once nothing writes to it any more (an ingest thread that did not stop keeps it open)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from evolvd.abc import IngestSink
from evolvd.buffer.duckdb_buffer import DuckDBBuffer
from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.config import EvolvdConfig
from evolvd.metrics import BufferCollector
from evolvd.status_models import BufferStatus, DeadLetterStatus

logger = logging.getLogger("evolvd.daemon")


def open_buffer(config: EvolvdConfig) -> DuckDBBuffer | PostgresBuffer:
    """The configured backend, open and migrated. Raises BufferLockedError (DuckDB: another daemon
    holds the file), BufferUnavailableError (PostgreSQL: no server answered), SchemaTooNewError."""
    buffer = config.buffer
    if buffer.backend == "postgres" and buffer.postgres_url is not None:
        return PostgresBuffer(
            buffer.postgres_url, buffer.pool_size, buffer.connect_timeout_s, config.labeling.sample_share
        )
    return DuckDBBuffer(config.buffer_path, buffer.threads, config.labeling.sample_share)


class BufferPart:
    name = "buffer"

    def __init__(self, config: EvolvdConfig, registry: CollectorRegistry) -> None:
        self.buffer = open_buffer(config)
        self.location = (
            self.buffer.shown if isinstance(self.buffer, PostgresBuffer) else str(config.buffer_path)
        )
        self._registry = registry
        self._collector = BufferCollector(
            self.buffer.table_counts,
            self.buffer.backlog,
            config.buffer_path if isinstance(self.buffer, DuckDBBuffer) else None,
            config.data_dir,
        )
        self._writers: list[Callable[[], bool]] = []

    @property
    def sink(self) -> IngestSink:
        """Where ingest writes (either backend)."""
        return self.buffer

    def keep_open_while(self, writing: Callable[[], bool]) -> None:
        """`writing()` true at close time (an ingest thread that did not stop) keeps the buffer open."""
        self._writers.append(writing)

    def start(self) -> None:
        self._registry.register(self._collector)

    def stop(self) -> None:
        # Not registered when the daemon stopped before the buffer part started.
        with contextlib.suppress(KeyError):
            self._registry.unregister(self._collector)

    def close(self) -> None:
        """Close the buffer, last of all (the daemon registers this as soon as it is open)."""
        if any(writing() for writing in self._writers):
            logger.error("the buffer stays open: a writer did not stop (its transactions keep it consistent)")
            return
        self.buffer.close()

    def status_sections(self) -> dict[str, BufferStatus | DeadLetterStatus]:
        buffer = self.buffer
        dead = buffer.dead_letters_by_reason()
        return {
            "buffer": BufferStatus(
                path=self.location,
                schema_version=buffer.schema_version,
                tables=buffer.table_counts(),
                events_by_state=buffer.events_by_state(),
            ),
            "dead_letters": DeadLetterStatus(total=sum(dead.values()), by_reason=dead),
        }
