"""The loop as a part of the daemon: its scheduled jobs (started last, stopped first, so the buffer
and serving outlive every job body), who runs them, and what /status shows of them.

Beside a DuckDB buffer the daemon is its loop's only member and runs the jobs from start to stop. On a
shared PostgreSQL buffer every loop member campaigns (evolvd.buffer.leadership): the one elected runs
the jobs on a scheduler of its term, the others stand by with none, and a deposed leader stops its
jobs. The decisions of those jobs check the term's fencing token (evolvd.buffer.leadership.Fence,
held by the campaign and the policy engine)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from evolvd.buffer import Buffer
from evolvd.buffer.leadership import Campaign, current_term
from evolvd.evaluation.store import EvaluationStore
from evolvd.loop.scheduler import LoopScheduler
from evolvd.loop.steps import Loop
from evolvd.policies.audit import recent_decisions
from evolvd.serving.canaries import CanaryStore
from evolvd.status_models import LeadershipStatus, LoopStatus
from evolvd.training.runs import RunStore

logger = logging.getLogger("evolvd.loop")

SHUTDOWN_TIMEOUT_S = 30.0

CampaignFactory = Callable[[Callable[[int], None], Callable[[str], None]], Campaign]
"""Builds the member's campaign around the service's (on_elected, on_deposed)."""


class LoopService:
    name = "loop"

    def __init__(
        self,
        loop: Loop,
        new_scheduler: Callable[[], LoopScheduler],
        buffer: Buffer,
        campaign: CampaignFactory | None = None,
        on_elected: Callable[[], None] | None = None,
    ) -> None:
        """`on_elected`: told when this member begins a term, before its jobs run."""
        self.loop = loop
        self._on_elected = on_elected
        self._new_scheduler = new_scheduler
        self._buffer = buffer
        self._scheduler: LoopScheduler | None = None
        self._term_lock = threading.Lock()
        self._campaign = campaign(self._elected, self._deposed) if campaign is not None else None

    @property
    def scheduler(self) -> LoopScheduler | None:
        """The scheduler of this member's term; None while it stands by."""
        return self._scheduler

    def start(self) -> None:
        if self._campaign is None:
            self._elected(0)
        else:
            self._campaign.start()

    def stop(self) -> None:
        if self._campaign is None:
            self._deposed("the daemon is stopping")
        else:
            self._campaign.stop()

    def _elected(self, token: int) -> None:
        if self._on_elected is not None:
            try:
                self._on_elected()
            except Exception:  # the loop's jobs still run; serving logged what it could not do
                logger.exception("taking over serving at the start of term %d failed", token)
        scheduler = self._new_scheduler()
        with self._term_lock:
            scheduler.start()
            self._scheduler = scheduler

    def _deposed(self, reason: str) -> None:
        with self._term_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(SHUTDOWN_TIMEOUT_S)

    def standby_reason(self) -> str | None:
        """Why this member runs no jobs now (None: it leads)."""
        if self._scheduler is not None:
            return None
        _, holder = current_term(self._buffer.cursor())
        return f"this member stands by: the loop's leader is {holder or 'not elected yet'}"

    def leadership(self) -> LeadershipStatus:
        if self._campaign is None:
            return LeadershipStatus(role="sole", token=None, leader=None, member=None, error=None)
        token, holder = current_term(self._buffer.cursor())
        return LeadershipStatus(
            role="leader" if self._campaign.leading else "standby",
            token=token,
            leader=holder,
            member=self._campaign.holder,
            error=self._campaign.last_error,
        )

    def status_sections(self) -> dict[str, LoopStatus]:
        """What the loop did, step by step: jobs, the latest runs, evaluations and decisions."""
        runner, buffer, scheduler = self.loop.runner, self._buffer, self._scheduler
        return {
            self.name: LoopStatus.model_validate(
                {
                    "leadership": self.leadership(),
                    "jobs": scheduler.status() if scheduler is not None else [],
                    "training_now": runner.active() if runner is not None else None,
                    "runs": RunStore(buffer).recent(5),
                    "evaluations": EvaluationStore(buffer).recent_summaries(5),
                    "promotion_decisions": recent_decisions(buffer.cursor(), "promotion", 5),
                    "canaries": CanaryStore(buffer).recent(3),
                }
            )
        }
