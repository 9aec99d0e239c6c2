"""The promotion job: decide on each evaluated candidate with the promotion policy (reject, canary,
or promote), and judge a running canary on live signals (gateway errors and latency per served
adapter, user feedback on its answers) until it goes live or is rolled back."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as scipy_stats

from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.keys import CAPTURE_SEAL_KEY, buffer_key
from evolvd.capture_seal import is_sealed
from evolvd.evaluation.evaluator import stored_evaluation
from evolvd.loop.scheduler import JobResult
from evolvd.metrics import LoopMetrics
from evolvd.policies.audit import Decision
from evolvd.policies.gates import promotion_gate
from evolvd.policies.loader import PolicySet
from evolvd.policies.models import RollbackPolicy
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
        buffer: DuckDBBuffer,
        serving: ServingService,
        policies: Callable[[], PolicySet],
        record_decisions: Callable[[list[Decision]], None],
        metrics: LoopMetrics | None,
    ) -> None:
        self._buffer = buffer
        self._serving = serving
        self._policies = policies
        self._record_decisions = record_decisions
        self._metrics = metrics
        self._ignored_feedback: dict[str, int] = {}
        """Per served model, how many unsealed feedback rows were last reported ignored."""

    def step(self) -> JobResult:
        open_canary = self._open_canary()
        if open_canary is not None:
            return self._judge_canary(open_canary)
        candidate = self._next_evaluated()
        if candidate is None:
            return JobResult("idle", "no evaluated candidate waiting")
        return self._decide(candidate)

    # -- a new candidate ------------------------------------------------------------------------

    def _next_evaluated(self) -> str | None:
        live = self._serving.router.routing.live_or_base if self._serving.router else None
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT a.name FROM adapters a WHERE a.status = 'evaluating' AND EXISTS ("
                " SELECT 1 FROM evaluations v WHERE v.adapter_name = a.name AND v.suite = 'summary'"
                " AND v.baseline_name = ?) ORDER BY a.version",
                [live],
            )
            .fetchall()
        )
        return str(rows[0][0]) if rows else None

    def _decide(self, name: str) -> JobResult:
        evaluation = stored_evaluation(self._buffer, name)
        assert evaluation is not None
        policies = self._policies()
        decision = promotion_gate(policies, evaluation)
        self._record_decisions([decision])
        self._count(decision.outcome)
        swapper, registry = self._serving.swapper, self._serving.registry
        assert swapper is not None
        if decision.outcome == "reject":
            registry.set_status(name, "rejected", "; ".join(decision.reasons))
            swapper.release(name)
            return JobResult("ok", f"{name} rejected: {'; '.join(decision.reasons)}")
        canary = policies.promotion.canary
        if decision.outcome == "canary" and canary is not None:
            swapper.start_canary(name, canary.share, "promotion policy: every gate passed")
            self._buffer.cursor().execute(
                "INSERT INTO canaries (adapter_name, live_adapter, share, window_s, min_requests)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (adapter_name) DO UPDATE SET started_at = now(),"
                " ended_at = NULL, outcome = NULL, reason = NULL",
                [name, evaluation.live, canary.share, canary.window_s, canary.min_requests],
            )
            self._set_canary_gauge(1)
            return JobResult(
                "ok", f"{name} is canary for {canary.share:.0%} of traffic ({canary.window_s:.0f} s)"
            )
        swapper.promote(name, "promotion policy: every gate passed")
        return JobResult("ok", f"{name} promoted to live")

    # -- a running canary -----------------------------------------------------------------------

    def _open_canary(self) -> dict[str, Any] | None:
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT adapter_name, live_adapter, share, window_s, min_requests, started_at FROM canaries"
                " WHERE ended_at IS NULL ORDER BY started_at DESC LIMIT 1"
            )
            .fetchone()
        )
        if row is None:
            return None
        keys = ("name", "live", "share", "window_s", "min_requests", "started_at")
        return dict(zip(keys, row, strict=True))

    def signals(self, canary: dict[str, Any]) -> CanarySignals:
        assert self._serving.router is not None
        started = canary["started_at"].timestamp()
        live = self._serving.router.routing.live_or_base
        stats = self._serving.served_stats
        mine, theirs = stats.since(canary["name"], started), stats.since(live, started)
        error_p, latency_p = compared(mine, theirs)
        return CanarySignals(
            canary_requests=mine.requests,
            live_requests=theirs.requests,
            canary_error_rate=mine.error_rate,
            live_error_rate=theirs.error_rate,
            canary_p95_s=mine.p95_seconds,
            live_p95_s=theirs.p95_seconds,
            canary_feedback=self._feedback(canary["name"], canary["started_at"]),
            live_feedback=self._feedback(live, canary["started_at"]),
            error_p_value=error_p,
            latency_p_value=latency_p,
        )

    def _feedback(self, served_by: str, since: dt.datetime) -> float | None:
        """Mean feedback on answers this model served. Only answers the gateway itself captured
        count: their metadata carries the gateway's seal (capture_seal), which a producer writing
        `served_by` into the stream cannot forge."""
        con = self._buffer.cursor()
        key = buffer_key(con, CAPTURE_SEAL_KEY)
        rows = con.execute(
            "SELECT e.id, json_extract_string(e.metadata, '$.seal'), f.value FROM feedback f"
            " JOIN events e ON e.id = f.event_id"
            " WHERE json_extract_string(e.metadata, '$.served_by') = ? AND f.received_at >= ?",
            [served_by, since],
        ).fetchall()
        trusted = [float(v) for event_id, mark, v in rows if is_sealed(key, event_id, served_by, mark)]
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

    def _judge_canary(self, canary: dict[str, Any]) -> JobResult:
        swapper, router = self._serving.swapper, self._serving.router
        assert swapper is not None and router is not None
        name = canary["name"]
        if router.routing.canary != name:
            # The daemon restarted mid-window (routing lives in memory): serve it again, fresh window.
            swapper.start_canary(name, canary["share"], "canary restored after daemon restart")
            self._buffer.cursor().execute(
                "UPDATE canaries SET started_at = now() WHERE adapter_name = ?", [name]
            )
            self._set_canary_gauge(1)
            return JobResult("ok", f"canary {name} restored; its window starts again")
        policies = self._policies()
        signals = self.signals(canary)
        broken = regressions(signals, policies.promotion.rollback)
        if broken:
            reason = "; ".join(broken)
            swapper.stop_canary(f"canary regressed: {reason}")
            self._serving.registry.set_status(name, "rolled_back", f"canary regressed: {reason}")
            self._serving.metrics.rollbacks.labels("ok").inc()
            self._close_canary(name, "rolled_back", signals, reason)
            self._decision(policies, name, "rollback", broken, signals)
            return JobResult("ok", f"canary {name} rolled back: {reason}")
        elapsed = (dt.datetime.now(dt.UTC) - canary["started_at"]).total_seconds()
        if elapsed < canary["window_s"]:
            return JobResult(
                "idle",
                f"canary {name}: {signals.canary_requests} requests, "
                f"{canary['window_s'] - elapsed:.0f} s left in the window",
            )
        if signals.canary_requests < canary["min_requests"]:
            return JobResult(
                "idle",
                f"canary {name}: window over but only {signals.canary_requests} requests"
                f" (promotion.canary.min_requests {canary['min_requests']}); extended",
            )
        swapper.promote(name, "canary passed its window")
        self._close_canary(name, "promoted", signals, None)
        self._decision(policies, name, "promote", [], signals)
        return JobResult("ok", f"canary {name} passed ({signals.canary_requests} requests): now live")

    def _close_canary(self, name: str, outcome: str, signals: CanarySignals, reason: str | None) -> None:
        self._buffer.cursor().execute(
            "UPDATE canaries SET ended_at = now(), outcome = ?, signals = ?, reason = ?"
            " WHERE adapter_name = ?",
            [outcome, json.dumps(asdict(signals)), reason, name],
        )
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
