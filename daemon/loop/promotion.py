"""The promotion job: decide on each evaluated candidate with the promotion policy (reject, canary,
or promote), and judge a running canary on live signals (gateway errors and latency per served
adapter, user feedback on its answers) until it goes live or is rolled back."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from scipy import stats as scipy_stats

from evolvd.buffer import Buffer
from evolvd.buffer.keys import CAPTURE_SEAL_KEY, buffer_key
from evolvd.capture_seal import is_sealed
from evolvd.evaluation.store import EvaluationStore
from evolvd.loop.scheduler import JobResult
from evolvd.metrics import LoopMetrics
from evolvd.policies.audit import Decision
from evolvd.policies.gates import promotion_gate
from evolvd.policies.loader import PolicySet
from evolvd.policies.models import RollbackPolicy
from evolvd.serving.canaries import CanaryOutcome, CanaryStore, OpenCanary
from evolvd.serving.registry import AdapterRegistry
from evolvd.serving.served_stats import WindowStats
from evolvd.serving.service import ServingService

logger = logging.getLogger("evolvd.promotion")


@dataclass(frozen=True)
class CanarySignals:
    canary_requests: int
    live_requests: int
    canary_error_rate: float
    live_error_rate: float
    canary_p95_s: float | None
    live_p95_s: float | None
    canary_feedback: float | None
    live_feedback: float | None
    error_p_value: float = 1.0
    """One-sided Fisher's exact test: how likely errors this much more frequent on the canary are by
    chance (1.0 without traffic on either side)."""
    latency_p_value: float = 1.0
    """One-sided Mann-Whitney U test of the canary's latencies against the live adapter's."""


def compared(canary: WindowStats, live: WindowStats) -> tuple[float, float]:
    """(error p-value, latency p-value) of the canary against the live adapter, one-sided."""
    error_p = 1.0
    if canary.requests and live.requests:
        table = [[canary.errors, canary.requests - canary.errors], [live.errors, live.requests - live.errors]]
        error_p = float(scipy_stats.fisher_exact(table, alternative="greater").pvalue)
    latency_p = 1.0
    if canary.latencies and live.latencies:
        latency_p = float(
            scipy_stats.mannwhitneyu(canary.latencies, live.latencies, alternative="greater").pvalue
        )
    return error_p, latency_p


def regressions(signals: CanarySignals, policy: RollbackPolicy) -> list[str]:
    """Every rollback rule the canary breaks, named by its policy field. An error-rate or latency
    regression counts when it is beyond its bound and significant (policy.max_p_value)."""
    reasons = []
    significant = f"p={{:.3g}} < {policy.max_p_value}"
    if (
        signals.canary_error_rate - signals.live_error_rate > policy.max_error_rate_increase
        and signals.error_p_value < policy.max_p_value
    ):
        reasons.append(
            f"promotion.rollback.max_error_rate_increase: error rate {signals.canary_error_rate:.3f} vs "
            f"{signals.live_error_rate:.3f} live (limit +{policy.max_error_rate_increase};"
            f" {significant.format(signals.error_p_value)})"
        )
    if signals.canary_p95_s is not None and signals.live_p95_s:
        ratio = signals.canary_p95_s / signals.live_p95_s
        if ratio > policy.max_latency_ratio and signals.latency_p_value < policy.max_p_value:
            reasons.append(
                f"promotion.rollback.max_latency_ratio: p95 latency {ratio:.2f}x the live adapter's"
                f" (limit {policy.max_latency_ratio}x; {significant.format(signals.latency_p_value)})"
            )
    if signals.canary_feedback is not None and signals.live_feedback is not None:
        drop = signals.live_feedback - signals.canary_feedback
        if drop > policy.max_feedback_drop:
            reasons.append(
                f"promotion.rollback.max_feedback_drop: mean feedback {signals.canary_feedback:+.2f} vs "
                f"{signals.live_feedback:+.2f} live (limit -{policy.max_feedback_drop})"
            )
    return reasons


class Promoter:
    def __init__(
        self,
        buffer: Buffer,
        serving: ServingService,
        policies: Callable[[], PolicySet],
        record_decisions: Callable[[list[Decision]], None],
        metrics: LoopMetrics | None,
    ) -> None:
        self._buffer = buffer
        self._canaries = CanaryStore(buffer)
        self._adapters = AdapterRegistry(buffer)
        self._evaluations = EvaluationStore(buffer)
        self._serving = serving
        self._policies = policies
        self._record_decisions = record_decisions
        self._metrics = metrics
        self._ignored_feedback: dict[str, int] = {}
        """Per served model, how many unsealed feedback rows were last reported ignored."""

    def step(self) -> JobResult:
        open_canary = self._canaries.current()
        if open_canary is not None:
            return self._judge_canary(open_canary)
        candidate = self._next_evaluated()
        if candidate is None:
            return JobResult("idle", "no evaluated candidate waiting")
        return self._decide(candidate)

    # -- a new candidate ------------------------------------------------------------------------

    def _next_evaluated(self) -> str | None:
        return self._adapters.evaluated_awaiting_decision(self._serving.serving_name())

    def _decide(self, name: str) -> JobResult:
        evaluation = self._evaluations.latest_summary(name)
        assert evaluation is not None
        policies = self._policies()
        decision = promotion_gate(policies, evaluation)
        self._record_decisions([decision])
        self._count(decision.outcome)
        serving = self._serving
        if decision.outcome == "reject":
            serving.reject(name, "; ".join(decision.reasons))
            return JobResult("ok", f"{name} rejected: {'; '.join(decision.reasons)}")
        canary = policies.promotion.canary
        if decision.outcome == "canary" and canary is not None:
            serving.canary_by_policy(name, canary.share, "promotion policy: every gate passed")
            self._canaries.open(name, evaluation.live, canary.share, canary.window_s, canary.min_requests)
            self._set_canary_gauge(1)
            return JobResult(
                "ok", f"{name} is canary for {canary.share:.0%} of traffic ({canary.window_s:.0f} s)"
            )
        serving.promote_by_policy(name, "promotion policy: every gate passed")
        return JobResult("ok", f"{name} promoted to live")

    # -- a running canary -----------------------------------------------------------------------

    def signals(self, canary: OpenCanary) -> CanarySignals:
        started = canary.started_at.timestamp()
        live = self._serving.serving_name()
        mine, theirs = (
            self._serving.window_stats(canary.name, started),
            self._serving.window_stats(live, started),
        )
        error_p, latency_p = compared(mine, theirs)
        return CanarySignals(
            canary_requests=mine.requests,
            live_requests=theirs.requests,
            canary_error_rate=mine.error_rate,
            live_error_rate=theirs.error_rate,
            canary_p95_s=mine.p95_seconds,
            live_p95_s=theirs.p95_seconds,
            canary_feedback=self._feedback(canary.name, canary.started_at),
            live_feedback=self._feedback(live, canary.started_at),
            error_p_value=error_p,
            latency_p_value=latency_p,
        )

    def _feedback(self, served_by: str, since: dt.datetime) -> float | None:
        """Mean feedback on answers this model served. Only answers the gateway itself captured
        count: their metadata carries the gateway's seal (capture_seal), which a producer writing
        `served_by` into the stream cannot forge."""
        key = buffer_key(self._buffer.cursor(), CAPTURE_SEAL_KEY)
        rows = self._buffer.feedback_on(served_by, since)
        trusted = [value for event_id, mark, value in rows if is_sealed(key, event_id, served_by, mark)]
        ignored = len(rows) - len(trusted)
        if ignored and self._ignored_feedback.get(served_by) != ignored:  # once per new count, not per tick
            self._ignored_feedback[served_by] = ignored
            logger.warning(
                "canary feedback for %s: %d of %d rows ignored (their answers carry no gateway seal)",
                served_by,
                ignored,
                len(rows),
            )
        return sum(trusted) / len(trusted) if trusted else None

    def _judge_canary(self, canary: OpenCanary) -> JobResult:
        serving = self._serving
        name = canary.name
        if serving.canary_name() != name:
            # The daemon restarted mid-window (routing lives in memory): serve it again, fresh window.
            serving.canary_by_policy(name, canary.share, "canary restored after daemon restart")
            self._canaries.restart_window(name)
            self._set_canary_gauge(1)
            return JobResult("ok", f"canary {name} restored; its window starts again")
        policies = self._policies()
        signals = self.signals(canary)
        broken = regressions(signals, policies.promotion.rollback)
        if broken:
            reason = "; ".join(broken)
            serving.roll_back_canary(name, reason)
            self._close_canary(name, CanaryOutcome.ROLLED_BACK, signals, reason)
            self._decision(policies, name, "rollback", broken, signals)
            return JobResult("ok", f"canary {name} rolled back: {reason}")
        elapsed = (dt.datetime.now(dt.UTC) - canary.started_at).total_seconds()
        if elapsed < canary.window_s:
            return JobResult(
                "idle",
                f"canary {name}: {signals.canary_requests} requests, "
                f"{canary.window_s - elapsed:.0f} s left in the window",
            )
        if signals.canary_requests < canary.min_requests:
            return JobResult(
                "idle",
                f"canary {name}: window over but only {signals.canary_requests} requests"
                f" (promotion.canary.min_requests {canary.min_requests}); extended",
            )
        serving.promote_by_policy(name, "canary passed its window")
        self._close_canary(name, CanaryOutcome.PROMOTED, signals, None)
        self._decision(policies, name, "promote", [], signals)
        return JobResult("ok", f"canary {name} passed ({signals.canary_requests} requests): now live")

    def _close_canary(
        self, name: str, outcome: CanaryOutcome, signals: CanarySignals, reason: str | None
    ) -> None:
        self._canaries.close(name, outcome, asdict(signals), reason)
        self._set_canary_gauge(0)

    def _decision(
        self, policies: PolicySet, name: str, outcome: str, reasons: list[str], signals: CanarySignals
    ) -> None:
        self._record_decisions(
            [
                Decision(
                    "promotion",
                    policies.hash_of("promotion"),
                    "adapter",
                    name,
                    outcome,
                    tuple(reasons),
                    {"canary": asdict(signals)},
                )
            ]
        )
        self._count(outcome)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.promotions.labels(outcome).inc()

    def _set_canary_gauge(self, value: int) -> None:
        if self._metrics is not None:
            self._metrics.canary_active.set(value)
