"""Logging setup for the daemon process: one line per record, text or JSON."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter


class _JsonFormatter(JsonFormatter):
    """One JSON object per record: ts (UTC, milliseconds), level, logger, message, the record's
    `extra` fields, and exc_info for a traceback (python-json-logger does the encoding)."""

    def __init__(self) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect attempt at WARNING/ERROR; evolvd reports what matters itself.
    logging.getLogger("kafka").setLevel(max(logging.getLevelName(level), logging.ERROR))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check otherwise
    # Two lines per job run every few seconds otherwise; evolvd logs each job that did work itself.
    logging.getLogger("apscheduler.executors").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("apscheduler.scheduler").addFilter(_drop_skipped_fires)
    logging.getLogger("kafka.net.transport").addFilter(_demote_read_after_close)


def _drop_skipped_fires(record: logging.LogRecord) -> bool:
    """APScheduler warns on every fire of a job still running (training runs for minutes on a 60 s
    interval). That is the configured no-overlap rule working; the skip is counted in
    evolvd_job_runs_total{outcome="skipped"} instead of a warning every interval."""
    return "maximum number of running instances reached" not in record.getMessage()


def _demote_read_after_close(record: logging.LogRecord) -> bool:
    """kafka-python 3.0.12 races its own close: `KafkaConsumer.close()` (our thread) sets the
    transport's socket to None while the network thread is between waking for a read and calling
    `recv`, and the library logs that as an ERROR with a traceback. Nothing is lost - the consumer is
    already closing and our offsets live in the buffer - so a clean Ctrl-C must not print an ERROR.
    The record is demoted to DEBUG (shown only if the kafka logger is set to DEBUG); every other
    transport error still reaches the log at its own level. Remove once a kafka-python release
    re-checks the closed flag after the wait (upstream main has reworked this code)."""
    error = record.exc_info[1] if record.exc_info else None
    closed_under_read = (
        isinstance(error, AttributeError)
        and "'NoneType' object has no attribute 'recv'" in str(error)
        and "Error receiving network data" in str(record.msg)
    )
    if not closed_under_read:
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
