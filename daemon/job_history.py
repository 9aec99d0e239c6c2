"""The `job_runs` table's one owner: every run of a scheduled job, its trigger, outcome and detail
(the job history /status and `evolvd jobs` show)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from evolvd.buffer import Buffer
from evolvd.jobs import JobOutcome


@dataclass(frozen=True)
class FinishedJobRun:
    trigger: str
    outcome: JobOutcome
    detail: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


class JobHistory:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def started(self, job: str, trigger: str) -> int:
        """Record a run as started (outcome NULL while it runs); returns its id."""
        row = (
            self._buffer.cursor()
            .execute("INSERT INTO job_runs (job, trigger) VALUES (?, ?) RETURNING job_run_id", [job, trigger])
            .fetchone()
        )
        assert row is not None
        return int(row[0])

    def finished(self, job_run_id: int, outcome: JobOutcome, detail: str | None) -> None:
        self._buffer.cursor().execute(
            "UPDATE job_runs SET outcome = ?, detail = ?, finished_at = now() WHERE job_run_id = ?",
            [outcome, detail, job_run_id],
        )

    def last_finished(self) -> dict[str, FinishedJobRun]:
        """Per job, its newest finished run."""
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT job, trigger, outcome, detail, started_at, finished_at FROM job_runs"
                " WHERE job_run_id IN"
                " (SELECT max(job_run_id) FROM job_runs WHERE outcome IS NOT NULL GROUP BY job)"
            )
            .fetchall()
        )
        return {
            str(job): FinishedJobRun(trigger, JobOutcome(outcome), detail, started, finished)
            for job, trigger, outcome, detail, started, finished in rows
        }
