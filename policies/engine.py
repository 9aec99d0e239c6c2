"""Apply the policies in force to the buffer: screen new examples, test drift, decide the training
gate, and answer dry runs of an edited policy set without writing anything."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evolvd.buffer import Buffer, transaction
from evolvd.buffer.leadership import Fence
from evolvd.metrics import PolicyMetrics
from evolvd.policies import views
from evolvd.policies.audit import Decision, count, record
from evolvd.policies.drift import DriftReport, drift_report
from evolvd.policies.gates import summarize, training_gate
from evolvd.policies.loader import PolicySet, load_candidate
from evolvd.policies.screen import SafetyScreen
from evolvd.policies.store import PolicyStore
from evolvd.status_models import PolicyStatus

logger = logging.getLogger("evolvd.policies")

Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class DriftInputs:
    reference_kind: str
    reference: list[str]
    recent: list[str]


class PolicyEngine:
    def __init__(
        self,
        buffer: Buffer,
        store: PolicyStore,
        metrics: PolicyMetrics | None,
        embed: Embedder,
        heldout_percent: int = 0,
        fence: Fence | None = None,
    ) -> None:
        """`fence`: the loop's term (evolvd.buffer.leadership): the decisions its jobs make (screen,
        drift, training gate, promotion) carry the term's token and are refused once it is over; a
        policy reload's decisions are every member's own and are not fenced."""
        self._buffer = buffer
        self._fence = fence
        # The evaluation's held-out slice of events (evaluation.heldout_percent): no snapshot takes
        # them, so the training gate does not count them either.
        self.heldout_percent = heldout_percent
        self._store = store
        self._metrics = metrics
        self._embed = embed
        self._screen_cache: tuple[str, SafetyScreen] | None = None
        self.last_drift: DriftReport | None = None
        self.last_drift_note = "not evaluated yet"
        self.last_gate: Decision | None = None
        self._lock = threading.Lock()  # one evaluation at a time (the jobs thread and dry runs)

    # --- the jobs ----------------------------------------------------------------------------

    def _screen_for(self, policies: PolicySet) -> SafetyScreen:
        key = policies.hash_of("safety")
        if self._screen_cache is None or self._screen_cache[0] != key:
            self._screen_cache = (key, SafetyScreen(policies.safety))
        return self._screen_cache[1]

    def screen_pending(self, batch: int = 500) -> Counter[str]:
        """Screen examples not yet screened; each gets its outcome and a decision row, in one transaction."""
        policies = self._store.current
        screen, policy_hash = self._screen_for(policies), policies.hash_of("safety")
        con = self._buffer.cursor()
        rows = views.unscreened_examples(con, batch)
        outcomes: Counter[str] = Counter()
        decisions = []
        updates = []
        for row in rows:
            result = screen.screen(row.prompt, row.completion)
            prompt, completion = result.texts
            updates.append(
                [prompt, completion, result.outcome, json.dumps(list(result.reasons)), row.example_id]
            )
            decisions.append(
                Decision(
                    "safety",
                    policy_hash,
                    "example",
                    str(row.example_id),
                    result.outcome,
                    result.reasons,
                    {"event_id": row.event_id},
                )
            )
            outcomes[result.outcome] += 1
        if not rows:
            return outcomes
        with transaction(con):
            con.executemany(
                "UPDATE training_examples SET safe_prompt = ?, safe_completion = ?, safety_outcome = ?,"
                " safety_reasons = ? WHERE example_id = ?",
                updates,
            )
            token = self._fence.check(con) if self._fence is not None else None
            record(con, decisions, token)
        count(decisions, self._metrics)
        logger.info("safety screen: %s", dict(outcomes))
        return outcomes

    def drift_inputs(self, policies: PolicySet) -> DriftInputs | str:
        """The two windows to compare, or why there are not enough prompts yet."""
        con = self._buffer.cursor()
        window = policies.drift.window
        if policies.drift.reference == "live_training_data":
            trained_on = views.live_training_prompts(con, window)
            if trained_on:
                return DriftInputs("live_training_data", trained_on, views.recent_prompts(con, window))
        total = views.event_count(con)
        if total < 2 * window:  # the windows must not overlap, or drift is diluted
            return f"waiting for {2 * window} prompts (first window + recent window), have {total}"
        return DriftInputs(
            "first_window", views.first_prompts(con, window), views.recent_prompts(con, window)
        )

    def evaluate_drift(self, policies: PolicySet, record_decision: bool = True) -> DriftReport | None:
        inputs = self.drift_inputs(policies)
        if isinstance(inputs, str):
            if record_decision:
                self.last_drift, self.last_drift_note = None, inputs
            return None
        report = drift_report(
            policies.drift,
            inputs.reference,
            inputs.recent,
            self._embed(inputs.reference),
            self._embed(inputs.recent),
            inputs.reference_kind,
        )
        if record_decision:
            self._record_drift(policies, report)
        return report

    def _record_drift(self, policies: PolicySet, report: DriftReport) -> None:
        self.last_drift, self.last_drift_note = report, "evaluated"
        outcome = "block" if report.guard_tripped else ("trigger" if report.trigger_fired else "pass")
        reasons = [f"MMD^2={report.mmd.mmd2:.4f} p={report.mmd.p_value:.4f} vs {report.reference_kind}"]
        reasons += [f"{name} drifted (p={t.p_value:.2g})" for name, t in report.features.items() if t.drifted]
        decision = Decision(
            "drift",
            policies.hash_of("drift"),
            "window",
            f"recent-{report.n_recent}",
            outcome,
            tuple(reasons),
            {
                "mmd2": report.mmd.mmd2,
                "p_value": report.mmd.p_value,
                "features": {n: t.p_value for n, t in report.features.items()},
            },
        )
        self.record_loop_decisions([decision])
        if self._metrics is not None:
            self._metrics.drift_mmd.set(report.mmd.mmd2)
            self._metrics.drift_p_value.set(report.mmd.p_value)
            self._metrics.drift_guard_tripped.set(int(report.guard_tripped))
            self._metrics.drift_trigger_fired.set(int(report.trigger_fired))
            for name, test in report.features.items():
                self._metrics.feature_drift_p_value.labels(name).set(test.p_value)
        if report.guard_tripped:
            logger.error("drift guard tripped: %s; training is blocked until a human looks", reasons[0])

    def gate_decision(self, policies: PolicySet, drift: DriftReport | None) -> Decision:
        con = self._buffer.cursor()
        data = summarize(views.candidate_examples(con, self.heldout_percent), policies.training, self._embed)
        last = views.last_run_started(con)
        since = None if last is None else (dt.datetime.now(dt.UTC) - last).total_seconds()
        return training_gate(policies, data, drift, since)

    def current_policies(self) -> PolicySet:
        return self._store.current

    def tick(self) -> None:
        """One round of the policy jobs (the scheduler's `policies` job runs it)."""
        with self._lock:
            self._store.poll()
            policies = self._store.current
            for job, action in (
                ("screen", self.screen_pending),
                ("drift", lambda: self.evaluate_drift(policies)),
            ):
                try:
                    action()
                except Exception:
                    logger.exception("policy job %s failed; it runs again next tick", job)
                    if self._metrics is not None:
                        self._metrics.evaluation_errors.labels(job).inc()
            try:
                decision = self.gate_decision(policies, self.last_drift)
            except Exception:
                logger.exception("training gate evaluation failed; it runs again next tick")
                if self._metrics is not None:
                    self._metrics.evaluation_errors.labels("training_gate").inc()
                return
            if self.last_gate is None or (decision.outcome, decision.reasons) != (
                self.last_gate.outcome,
                self.last_gate.reasons,
            ):
                self.record_loop_decisions([decision])  # a row when the verdict changes, not one per tick
            self.last_gate = decision

    def record_loop_decisions(self, decisions: list[Decision]) -> None:
        """Decisions of the loop's jobs: fenced by the loop's term (StaleLeaderError once it is over)."""
        self.record_decisions(decisions, self._fence)

    def record_decisions(self, decisions: list[Decision], fence: Fence | None = None) -> None:
        """Write decisions to the audit trail, then count them (also the store's reload hook). With a
        `fence` (the loop's promotion decisions) they carry its term's token, and are refused
        (StaleLeaderError, nothing written) once a newer term began."""
        with transaction(self._buffer.cursor()) as con:
            token = fence.check(con) if fence is not None else None
            record(con, decisions, token)
        count(decisions, self._metrics)

    def status(self) -> PolicyStatus:
        drift = self.last_drift
        return PolicyStatus.model_validate(
            {
                **self._store.status(),
                "drift": {"note": self.last_drift_note, "report": None if drift is None else drift.as_dict()},
                "training_gate": None if self.last_gate is None else self.last_gate.as_dict(),
            }
        )

    # --- dry run -----------------------------------------------------------------------------

    def reload(self) -> str:
        return self._store.reload()

    def dry_run(self, files: dict[str, str], replace_all: bool, shown_as: str) -> dict[str, Any]:
        """Validate uploaded policy files (ConfigError when invalid) and dry-run them."""
        return self.dry_run_policies(load_candidate(self._store.directory, files, replace_all, shown_as))

    def dry_run_policies(self, candidate: PolicySet) -> dict[str, Any]:
        """What the candidate policies would change on the current buffer. Reads only."""
        started = time.monotonic()
        with self._lock:
            current = self._store.current
            con = self._buffer.cursor()
            screen = SafetyScreen(candidate.safety)
            transitions: Counter[str] = Counter()
            newly_dropped: list[int] = []
            newly_kept: list[int] = []
            for row in views.all_examples(con):
                if row.safety_outcome is None:
                    continue
                outcome = screen.screen(row.prompt, row.completion).outcome
                if outcome != row.safety_outcome:
                    transitions[f"{row.safety_outcome}->{outcome}"] += 1
                    if outcome == "quarantine":
                        newly_dropped.append(row.example_id)
                    elif row.safety_outcome == "quarantine":
                        newly_kept.append(row.example_id)
            drift_now = self.evaluate_drift(current, record_decision=False)
            drift_then = self.evaluate_drift(candidate, record_decision=False)
            gate_now = self.gate_decision(current, drift_now)
            gate_then = self.gate_decision(candidate, drift_then)
        changed = {
            n: f.content_hash for n, f in candidate.files.items() if f.content_hash != current.hash_of(n)
        }
        return {
            "applied": False,
            "policies_changed": changed,
            "examples": {
                "transitions": dict(transitions),
                "newly_quarantined": newly_dropped[:50],
                "newly_released": newly_kept[:50],
            },
            "training_gate": {
                "current": gate_now.as_dict(),
                "candidate": gate_then.as_dict(),
                "changes": gate_now.outcome != gate_then.outcome or gate_now.reasons != gate_then.reasons,
            },
            "drift": {
                "current": None if drift_now is None else _drift_summary(drift_now),
                "candidate": None if drift_then is None else _drift_summary(drift_then),
            },
            "seconds": round(time.monotonic() - started, 2),
        }


def _drift_summary(report: DriftReport) -> dict[str, Any]:
    return {
        "mmd2": report.mmd.mmd2,
        "p_value": report.mmd.p_value,
        "trigger": report.trigger_fired,
        "guard": report.guard_tripped,
    }
