"""The `runs` table's one owner: a training run's row from start to its outcome.

A run is `running` while its child trains, then `succeeded` or `failed` (a run the daemon was
stopped during is failed when the loop next looks; a trained adapter the registry refused fails its
run too). Migration 0008 keeps any other status out of the table."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from evolvd.buffer import Buffer, rows_as_dicts


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    dataset_id: str
    attempt: int
    finished_at: dt.datetime
    reason: str | None


class RunStore:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def start(self, run_id: str, dataset_id: str, kind: str, attempt: int, config: dict[str, Any]) -> None:
        self._buffer.cursor().execute(
            "INSERT INTO runs (run_id, dataset_id, kind, status, attempt, config, started_at)"
            " VALUES (?, ?, ?, ?, ?, ?, now())",
            [run_id, dataset_id, kind, RunStatus.RUNNING, attempt, json.dumps(config)],
        )

    def progress(self, run_id: str, progress: dict[str, Any]) -> None:
        """The latest training step's figures, so /status shows a run between its start and end."""
        self._buffer.cursor().execute(
            "UPDATE runs SET metrics = ? WHERE run_id = ?", [json.dumps(progress), run_id]
        )

    def finish(self, run_id: str, succeeded: bool, reason: str | None, metrics: dict[str, Any]) -> None:
        status = RunStatus.SUCCEEDED if succeeded else RunStatus.FAILED
        self._buffer.cursor().execute(
            "UPDATE runs SET status = ?, reason = ?, metrics = ?, finished_at = now() WHERE run_id = ?",
            [status, reason, json.dumps(metrics), run_id],
        )

    def fail(self, run_id: str, reason: str) -> None:
        """A run that trained but whose result was refused afterwards (e.g. by the adapter check)."""
        self._buffer.cursor().execute(
            "UPDATE runs SET status = ?, reason = ? WHERE run_id = ?", [RunStatus.FAILED, reason, run_id]
        )

    def attach_adapter(self, run_id: str, adapter_name: str) -> None:
        self._buffer.cursor().execute(
            "UPDATE runs SET adapter_name = ? WHERE run_id = ?", [adapter_name, run_id]
        )

    def fail_interrupted(self) -> None:
        """A run left `running` by a daemon that died is failed: nothing is training it now. Called
        only where no run of this daemon is in progress (the training job, which starts runs)."""
        self._buffer.cursor().execute(
            "UPDATE runs SET status = ?, reason = 'the daemon stopped during the run', finished_at = now()"
            " WHERE status = ?",
            [RunStatus.FAILED, RunStatus.RUNNING],
        )

    def last_failed(self) -> FailedRun | None:
        """The newest run, when it failed (the training job retries it with backoff)."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT run_id, dataset_id, attempt, finished_at, reason, status FROM runs"
                " ORDER BY created_at DESC LIMIT 1"
            )
            .fetchone()
        )
        if row is None or row[5] != RunStatus.FAILED:
            return None
        return FailedRun(row[0], row[1], int(row[2]), row[3], row[4])

    def recent(self, limit: int = 5) -> list[dict[str, Any]]:
        return rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT run_id, dataset_id, kind, status, attempt, reason, adapter_name, metrics,"
                " started_at, finished_at FROM runs ORDER BY created_at DESC LIMIT ?",
                [limit],
            )
        )

    def get(self, run_id: str | None) -> dict[str, Any] | None:
        rows = rows_as_dicts(self._buffer.cursor().execute("SELECT * FROM runs WHERE run_id = ?", [run_id]))
        return rows[0] if rows else None
