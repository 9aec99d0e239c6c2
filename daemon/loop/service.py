"""The loop as a part of the daemon: its scheduled jobs (started last, stopped first, so the buffer
and serving outlive every job body) and what /status shows of them."""

from __future__ import annotations

from evolvd.buffer import DuckDBBuffer
from evolvd.evaluation.store import EvaluationStore
from evolvd.loop.scheduler import LoopScheduler
from evolvd.loop.steps import Loop
from evolvd.policies.audit import recent_decisions
from evolvd.serving.canaries import CanaryStore
from evolvd.status_models import LoopStatus
from evolvd.training.runs import RunStore

SHUTDOWN_TIMEOUT_S = 30.0


class LoopService:
    name = "loop"

    def __init__(self, loop: Loop, scheduler: LoopScheduler, buffer: DuckDBBuffer) -> None:
        self.loop = loop
        self.scheduler = scheduler
        self._buffer = buffer

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(SHUTDOWN_TIMEOUT_S)

    def status_sections(self) -> dict[str, LoopStatus]:
        """What the loop did, step by step: jobs, the latest runs, evaluations and decisions."""
        runner, buffer = self.loop.runner, self._buffer
        return {
            self.name: LoopStatus.model_validate(
                {
                    "jobs": self.scheduler.status(),
                    "training_now": runner.active() if runner is not None else None,
                    "runs": RunStore(buffer).recent(5),
                    "evaluations": EvaluationStore(buffer).recent_summaries(5),
                    "promotion_decisions": recent_decisions(buffer.cursor(), "promotion", 5),
                    "canaries": CanaryStore(buffer).recent(3),
                }
            )
        }
