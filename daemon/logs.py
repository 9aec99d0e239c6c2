"""Logging setup for the daemon process: one line per record, text or JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


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


def _drop_skipped_fires(record: logging.LogRecord) -> bool:
    """APScheduler warns on every fire of a job still running (training runs for minutes on a 60 s
    interval). That is the configured no-overlap rule working; the skip is counted in
    evolvd_job_runs_total{outcome="skipped"} instead of a warning every interval."""
    return "maximum number of running instances reached" not in record.getMessage()
