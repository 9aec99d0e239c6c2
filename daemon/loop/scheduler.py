"""The loop's scheduler: APScheduler runs each job on its trigger, with its state (next run time,
paused or not) in a SQLAlchemy job store, so schedules and pauses survive a restart: a SQLite file in
the data dir beside a DuckDB buffer, the shared database itself beside a PostgreSQL one (so the member
that leads next finds the operator's pauses; only the leader runs a scheduler on it).

A job never overlaps itself: APScheduler's max_instances=1 covers scheduled runs, and each job's
own lock covers a "run now" that arrives mid-run. Missed runs are coalesced into one run when
they are late by less than the misfire grace time. Every run is a `job_runs` row and a metric."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from evolvd.buffer import Buffer
from evolvd.config import EvolvdConfig, JobSchedule, SchedulerConfig
from evolvd.job_history import JobHistory
from evolvd.jobs import JOBS, JobOutcome
from evolvd.metrics import LoopMetrics
from evolvd.status_models import JobAction, JobRunStatus, JobStatus

logger = logging.getLogger("evolvd.scheduler")


@dataclass(frozen=True)
class JobResult:
    outcome: str
    """ok: it did work; idle: nothing to do (detail says why)."""
    detail: str


JobBody = Callable[[], JobResult]

# The running daemon's jobs by name. The job store keeps only the textual reference to `run_job`
# and the job's name (it pickles what it stores), so the live objects are looked up here.
_RUNNERS: dict[str, JobRunner] = {}


def run_job(name: str) -> None:
    """What the job store calls: run the named job of this process's daemon."""
    runner = _RUNNERS.get(name)
    if runner is None:
        logger.warning("scheduled job %s has no runner in this process; skipped", name)
        return
    runner.run("schedule")


class JobRunner:
    """One job: its body, its no-overlap lock, and its history rows and metrics."""

    def __init__(self, name: str, body: JobBody, buffer: Buffer, metrics: LoopMetrics | None) -> None:
        self.name = name
        self._body = body
        self._history = JobHistory(buffer)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._last_logged: JobResult | None = None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def run(self, trigger: str) -> JobResult:
        if not self._lock.acquire(blocking=False):
            self._count("skipped")
            return JobResult("skipped", f"{self.name} is already running")
        started = time.perf_counter()
        job_run_id = self._history.started(self.name, trigger)
        try:
            result = self._body()
        except Exception as exc:
            logger.exception("job %s failed; it runs again on its next trigger", self.name)
            result = JobResult("failed", f"{type(exc).__name__}: {exc}"[:1000])
        finally:
            self._lock.release()
        self._history.finished(job_run_id, JobOutcome(result.outcome), result.detail)
        self._count(result.outcome, time.perf_counter() - started)
        # A job that did work is logged, but once per new result: the policies job says "training
        # gate: pass" every tick until something changes.
        if result.outcome == "ok" and result != self._last_logged:
            logger.info("job %s: %s", self.name, result.detail)
            self._last_logged = result
        return result

    def count_skipped(self) -> None:
        """A scheduled fire dropped because the previous run is still going (max_instances=1)."""
        self._count("skipped")

    def _count(self, outcome: str, seconds: float | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.job_runs.labels(self.name, outcome).inc()
        if seconds is not None:
            self._metrics.job_seconds.labels(self.name).observe(seconds)


def trigger_for(schedule: JobSchedule) -> BaseTrigger:
    if schedule.cron is not None:
        return CronTrigger.from_crontab(schedule.cron)
    assert schedule.interval_s is not None
    return IntervalTrigger(seconds=schedule.interval_s)


class UnknownJobError(KeyError):
    pass


def job_store_url(config: EvolvdConfig) -> str:
    """Where the scheduler keeps its jobs: beside the buffer, in the same engine (SQLAlchemy's URL)."""
    url = config.buffer.postgres_url
    if config.buffer.backend == "postgres" and url is not None:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return f"sqlite:///{config.data_dir / 'scheduler.sqlite'}"


class LoopScheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        store_url: str,
        bodies: dict[str, JobBody],
        buffer: Buffer,
        metrics: LoopMetrics | None,
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._metrics = metrics
        self.runners = {name: JobRunner(name, body, buffer, metrics) for name, body in bodies.items()}
        self._scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=store_url)},
            executors={"default": {"type": "threadpool", "max_workers": len(JOBS)}},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(config.misfire_grace_s),
            },
        )

    def _on_max_instances(self, event: JobEvent) -> None:
        runner = self.runners.get(event.job_id)
        if runner is not None:
            runner.count_skipped()

    def start(self) -> None:
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        _RUNNERS.clear()
        _RUNNERS.update(self.runners)
        self._scheduler.start(paused=True)  # sync the stored jobs with the config before any fires
        self._sync_jobs()
        self._scheduler.resume()
        self._update_paused_metric()

    def _sync_jobs(self) -> None:
        stored = {job.id: job for job in self._scheduler.get_jobs()}
        for name in JOBS:
            schedule: JobSchedule = getattr(self._config, name)
            job = stored.pop(name, None)
            if name not in self.runners or not schedule.enabled:
                if job is not None:
                    job.remove()
                continue
            trigger = trigger_for(schedule)
            if job is None:
                self._scheduler.add_job(run_job, trigger, args=[name], id=name, name=name)
            elif str(job.trigger) != str(trigger):
                paused = job.next_run_time is None
                self._scheduler.reschedule_job(name, trigger=trigger)
                if paused:  # an operator's pause outlives a schedule edit
                    self._scheduler.pause_job(name)
                logger.info("job %s rescheduled: %s -> %s", name, job.trigger, trigger)
        for leftover in stored.values():
            leftover.remove()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop firing jobs, then wait (bounded) for running bodies: they watch the daemon's stop
        event (a training child is killed at once), and the buffer must outlive their last write."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        deadline = time.monotonic() + timeout_s
        while any(r.running for r in self.runners.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        still = [r.name for r in self.runners.values() if r.running]
        if still:
            # A body still waiting on one request to the serving process; serving stops next, which
            # fails that request, and whatever it did not write stays pending for the next start.
            logger.warning(
                "jobs still running after %.0f s at shutdown: %s (their unfinished work stays pending)",
                timeout_s,
                ", ".join(still),
            )
        _RUNNERS.clear()

    def _runner(self, name: str) -> JobRunner:
        if name not in self.runners:
            raise UnknownJobError(f"no job named {name!r}; jobs: {', '.join(self.runners)}")
        return self.runners[name]

    def pause(self, name: str) -> None:
        self._runner(name)
        if self._scheduler.get_job(name) is None:
            raise UnknownJobError(f"job {name!r} is not scheduled (scheduler.{name}.enabled is false)")
        self._scheduler.pause_job(name)
        self._update_paused_metric()
        logger.info("job %s paused", name)

    def resume(self, name: str) -> None:
        self._runner(name)
        if self._scheduler.get_job(name) is None:
            raise UnknownJobError(f"job {name!r} is not scheduled (scheduler.{name}.enabled is false)")
        self._scheduler.resume_job(name)
        self._update_paused_metric()
        logger.info("job %s resumed", name)

    def run_now(self, name: str) -> JobAction:
        """Start the job in the background at once; refused while it is running."""
        runner = self._runner(name)
        if runner.running:
            return JobAction(job=name, action="run", started=False, reason=f"{name} is already running")
        threading.Thread(target=runner.run, args=("manual",), name=f"evolvd-job-{name}", daemon=True).start()
        return JobAction(job=name, action="run", started=True)

    def _update_paused_metric(self) -> None:
        if self._metrics is None:
            return
        for name in self.runners:
            job = self._scheduler.get_job(name)
            self._metrics.job_paused.labels(name).set(
                1 if job is not None and job.next_run_time is None else 0
            )

    def status(self) -> list[JobStatus]:
        last = JobHistory(self._buffer).last_finished()
        out = []
        for name, runner in self.runners.items():
            job = self._scheduler.get_job(name)
            previous = last.get(name)
            out.append(
                JobStatus(
                    job=name,
                    scheduled=job is not None,
                    trigger=str(job.trigger) if job is not None else None,
                    paused=job is not None and job.next_run_time is None,
                    next_run=job.next_run_time if job is not None else None,
                    running=runner.running,
                    last=None
                    if previous is None
                    else JobRunStatus(
                        trigger=previous.trigger,
                        outcome=str(previous.outcome),
                        detail=previous.detail,
                        started_at=previous.started_at,
                        finished_at=previous.finished_at,
                    ),
                )
            )
        return out
