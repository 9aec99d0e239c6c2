"""The adapter registry and swap log in the buffer: every adapter's status and every swap, as rows.

The one owner of the `adapters` and `swaps` tables, and of the adapter state machine
(docs/ARCHITECTURE.md draws it): a registered adapter is a `candidate`; the loop's evaluation makes it
`evaluating`; the promotion policy rejects it (`rejected`), starts a canary (`canary`, back to
`candidate` when the canary is stopped) or promotes it (`live`, which retires the adapter live
before: `retired`); a rollback or a canary that regressed makes it `rolled_back`. Operators may
promote any registered adapter. Migration 0008 keeps any other status out of the table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from evolvd.buffer import Buffer, rows_as_dicts, transaction


class AdapterStatus(StrEnum):
    CANDIDATE = "candidate"
    EVALUATING = "evaluating"
    CANARY = "canary"
    LIVE = "live"
    RETIRED = "retired"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


AWAITING_DECISION = (AdapterStatus.CANDIDATE, AdapterStatus.EVALUATING, AdapterStatus.CANARY)
"""A trained adapter in one of these holds the next training run back until it is decided."""
DISPOSABLE = (AdapterStatus.RETIRED, AdapterStatus.REJECTED, AdapterStatus.ROLLED_BACK)
"""What retention may delete the files of (beyond the newest few, and never what serves)."""


@dataclass(frozen=True)
class AdapterRow:
    name: str
    version: int
    path: Path
    status: AdapterStatus
    parent: str | None
    reason: str | None
    manifest: dict[str, Any]


class AdapterRegistry:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def next_version(self) -> int:
        row = self._buffer.cursor().execute("SELECT coalesce(max(version), 0) + 1 FROM adapters").fetchone()
        return int(row[0]) if row else 1

    def add(
        self,
        name: str,
        version: int,
        path: Path,
        manifest: dict[str, Any],
        parent: str | None,
        run_id: str | None = None,
        gated: bool = False,
    ) -> None:
        """`gated`: an operator's adapter the loop evaluates and gates like a trained one."""
        self._buffer.cursor().execute(
            "INSERT INTO adapters (name, version, run_id, parent, status, path, manifest, gated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [name, version, run_id, parent, AdapterStatus.CANDIDATE, str(path), json.dumps(manifest), gated],
        )

    def next_to_evaluate(self, live: str) -> str | None:
        """The oldest candidate the loop should evaluate against `live`: trained ones and those an
        operator registered with `evaluate` (gated), not yet evaluated against this baseline (a
        candidate evaluated against an adapter that is no longer live is evaluated again)."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT a.name FROM adapters a WHERE a.status IN ('candidate', 'evaluating')"
                " AND (a.run_id IS NOT NULL OR a.gated) AND NOT EXISTS (SELECT 1 FROM evaluations v"
                " WHERE v.adapter_name = a.name AND v.suite = 'summary' AND v.baseline_name = ?)"
                " ORDER BY a.version LIMIT 1",
                [live],
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def evaluated_awaiting_decision(self, live: str | None) -> str | None:
        """The oldest adapter evaluated against `live` that the promotion policy has not decided."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT a.name FROM adapters a WHERE a.status = ? AND EXISTS ("
                " SELECT 1 FROM evaluations v WHERE v.adapter_name = a.name AND v.suite = 'summary'"
                " AND v.baseline_name = ?) ORDER BY a.version LIMIT 1",
                [AdapterStatus.EVALUATING, live],
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def undecided_trained(self) -> tuple[str, AdapterStatus] | None:
        """The oldest adapter a training run made that still awaits its decision."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT name, status FROM adapters WHERE run_id IS NOT NULL"
                " AND status IN (SELECT unnest(CAST(? AS VARCHAR[]))) ORDER BY version LIMIT 1",
                [list(AWAITING_DECISION)],
            )
            .fetchone()
        )
        return None if row is None else (str(row[0]), AdapterStatus(row[1]))

    def disposable(self, keep: int) -> list[tuple[str, Path, str | None]]:
        """(name, path, run_id) of the adapters done with, beyond the newest `keep` of them."""
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT name, path, run_id FROM adapters"
                " WHERE status IN (SELECT unnest(CAST(? AS VARCHAR[]))) ORDER BY version DESC OFFSET ?",
                [list(DISPOSABLE), keep],
            )
            .fetchall()
        )
        return [(str(name), Path(path), run_id) for name, path, run_id in rows]

    def record(self, name: str) -> dict[str, Any] | None:
        """An adapter's whole row, its manifest parsed (lineage)."""
        rows = rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT name, version, status, parent, reason, path, run_id, manifest, created_at, updated_at"
                " FROM adapters WHERE name = ?",
                [name],
            )
        )
        if not rows:
            return None
        rows[0]["manifest"] = json.loads(rows[0]["manifest"])
        return rows[0]

    def swaps_of(self, name: str) -> list[dict[str, Any]]:
        return rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT action, outcome, from_adapter, to_adapter, reason, created_at FROM swaps"
                " WHERE from_adapter = ? OR to_adapter = ? ORDER BY swap_id",
                [name, name],
            )
        )

    def get(self, name: str) -> AdapterRow | None:
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT name, version, path, status, parent, reason, manifest FROM adapters WHERE name = ?",
                [name],
            )
            .fetchone()
        )
        return (
            None
            if row is None
            else AdapterRow(
                row[0], row[1], Path(row[2]), AdapterStatus(row[3]), row[4], row[5], json.loads(row[6])
            )
        )

    def all(self) -> list[dict[str, Any]]:
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT name, version, status, parent, reason, path, created_at, updated_at FROM adapters "
                "ORDER BY version DESC"
            )
            .fetchall()
        )
        keys = ("name", "version", "status", "parent", "reason", "path", "created_at", "updated_at")
        return [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(keys, r, strict=True)}
            for r in rows
        ]

    def set_status(self, name: str, status: AdapterStatus, reason: str | None = None) -> None:
        self.set_statuses([(name, status, reason)])

    def set_statuses(self, changes: list[tuple[str, AdapterStatus, str | None]]) -> None:
        """(name, status, reason) changes in one transaction: all of them happen, or none."""
        with transaction(self._buffer.cursor()) as con:
            for name, status, reason in changes:
                con.execute(
                    "UPDATE adapters SET status = ?, reason = coalesce(?, reason), updated_at = now()"
                    " WHERE name = ?",
                    [status, reason, name],
                )

    def set_live(self, name: str, reason: str) -> None:
        """Make `name` the one live adapter, retiring whichever was live, in one transaction: a crash
        can leave the old live adapter or the new one, never both and never neither."""
        with transaction(self._buffer.cursor()) as con:
            con.execute(
                "UPDATE adapters SET status = ?, reason = ?, updated_at = now()"
                " WHERE status = ? AND name <> ?",
                [AdapterStatus.RETIRED, f"replaced by {name}", AdapterStatus.LIVE, name],
            )
            con.execute(
                "UPDATE adapters SET status = ?, reason = ?, updated_at = now() WHERE name = ?",
                [AdapterStatus.LIVE, reason, name],
            )

    def live(self) -> str | None:
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT name FROM adapters WHERE status = ? ORDER BY updated_at DESC LIMIT 1",
                [AdapterStatus.LIVE],
            )
            .fetchone()
        )
        return str(row[0]) if row else None

    def previous_live(self) -> str | None:
        """The adapter a rollback would go to, as the swap log left it: the one the latest promote
        replaced (if it is still merely retired); none after a rollback."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT s.action, s.from_adapter, a.status FROM swaps s"
                " LEFT JOIN adapters a ON a.name = s.from_adapter"
                " WHERE s.outcome = 'ok' AND s.action IN ('promote', 'rollback')"
                " ORDER BY s.swap_id DESC LIMIT 1"
            )
            .fetchone()
        )
        if row is None or row[0] != "promote" or row[2] != AdapterStatus.RETIRED:
            return None
        return str(row[1])

    def record_swap(
        self,
        action: str,
        outcome: str,
        from_adapter: str | None,
        to_adapter: str | None,
        reason: str | None,
        duration_ms: float | None,
    ) -> None:
        self._buffer.cursor().execute(
            "INSERT INTO swaps (from_adapter, to_adapter, action, outcome, reason, duration_ms) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [from_adapter, to_adapter, action, outcome, reason, duration_ms],
        )

    def swaps(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT swap_id, action, outcome, from_adapter, to_adapter, reason, duration_ms, created_at "
                "FROM swaps ORDER BY swap_id DESC LIMIT ?",
                [limit],
            )
            .fetchall()
        )
        keys = ("swap_id", "action", "outcome", "from", "to", "reason", "duration_ms", "created_at")
        return [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(keys, r, strict=True)}
            for r in rows
        ]
