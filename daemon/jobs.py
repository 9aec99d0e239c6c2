"""The loop's jobs in one table: each job's name and default trigger, and the outcomes a run can have.
The config's defaults (`scheduler.<job>`), the metrics' label values, the scheduler and the loop's job
bodies all read it, so a job is added or renamed here alone."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobOutcome(StrEnum):
    OK = "ok"
    """It did work."""
    IDLE = "idle"
    """Nothing to do (the detail says why)."""
    SKIPPED = "skipped"
    """The previous run of the job was still going."""
    FAILED = "failed"


@dataclass(frozen=True)
class JobSpec:
    name: str
    interval_s: float | None = None
    cron: str | None = None
    """Crontab syntax, local time (exactly one of interval_s and cron)."""


JOB_SPECS = (
    JobSpec("labeling", interval_s=5),
    JobSpec("policies", interval_s=30),
    JobSpec("training", interval_s=60),
    JobSpec("evaluation", interval_s=30),
    JobSpec("promotion", interval_s=15),
    JobSpec("retention", cron="17 3 * * *"),
)
JOBS = tuple(spec.name for spec in JOB_SPECS)
JOB_OUTCOMES = tuple(JobOutcome)
