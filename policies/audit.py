"""The audit trail: every policy decision is a buffer row and a counted metric."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from evolvd.buffer import rows_as_dicts
from evolvd.buffer.sql import Sql
from evolvd.metrics import PolicyMetrics


@dataclass(frozen=True)
class Decision:
    """One decision: which policy (and which version of it) decided what, about what, and why."""

    policy: str
    policy_hash: str
    subject_kind: str
    """event | example | dataset | run | adapter | policy_file | window"""

    subject_id: str
    outcome: str
    """allow | redact | quarantine | pass | block | promote | canary | reject | applied | rejected"""

    reasons: tuple[str, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    """A summary of what was looked at: counts, shares, p-values. Never the PII itself."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "subject_kind": self.subject_kind,
            "subject_id": self.subject_id,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "inputs": self.inputs,
        }


def record(con: Sql, decisions: Sequence[Decision], fencing_token: int | None = None) -> None:
    """Insert the decisions on `con`, inside the caller's transaction if it has one.

    Call `count` after the commit: a rolled-back decision is then never counted, and a crash
    between the commit and the count loses a metric increment, never a row.
    """
    if not decisions:
        return
    con.executemany(
        "INSERT INTO policy_decisions"
        " (policy, policy_hash, subject_kind, subject_id, outcome, reasons, inputs, fencing_token)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            [
                d.policy,
                d.policy_hash,
                d.subject_kind,
                d.subject_id,
                d.outcome,
                json.dumps(list(d.reasons)),
                json.dumps(d.inputs, default=str),
                fencing_token,
            ]
            for d in decisions
        ],
    )


def count(decisions: Sequence[Decision], metrics: PolicyMetrics | None) -> None:
    if metrics is None:
        return
    for d in decisions:
        metrics.decisions.labels(d.policy, d.outcome).inc()


def recent_decisions(con: Sql, policy: str, limit: int = 5) -> list[dict[str, Any]]:
    """The newest decisions of one policy, about whatever subject."""
    return rows_as_dicts(
        con.execute(
            "SELECT subject_id AS adapter, outcome, reasons, created_at FROM policy_decisions"
            " WHERE policy = ? ORDER BY decision_id DESC LIMIT ?",
            [policy, limit],
        )
    )


def decisions_about(con: Sql, subject_kind: str, subject_id: str) -> list[dict[str, Any]]:
    """Every decision about one subject, oldest first (lineage)."""
    return rows_as_dicts(
        con.execute(
            "SELECT policy, outcome, reasons, created_at FROM policy_decisions"
            " WHERE subject_kind = ? AND subject_id = ? ORDER BY decision_id",
            [subject_kind, subject_id],
        )
    )
