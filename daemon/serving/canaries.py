"""The `canaries` table's one owner: each canary window, which adapter took which share of traffic
against which live adapter, and how the window ended.

The router holds the split while the daemon runs; this table is what survives a restart (the promotion
job serves an open window again) and what /status and the lineage show."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from evolvd.buffer import Buffer, rows_as_dicts


class CanaryOutcome(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    STOPPED = "stopped"


@dataclass(frozen=True)
class OpenCanary:
    name: str
    live: str | None
    share: float
    window_s: float
    min_requests: int
    started_at: dt.datetime


class CanaryStore:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def open(self, name: str, live: str | None, share: float, window_s: float, min_requests: int) -> None:
        """Start (or start again) the window of `name`."""
        self._buffer.cursor().execute(
            "INSERT INTO canaries (adapter_name, live_adapter, share, window_s, min_requests)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (adapter_name) DO UPDATE SET started_at = now(),"
            " ended_at = NULL, outcome = NULL, reason = NULL",
            [name, live, share, window_s, min_requests],
        )

    def restart_window(self, name: str) -> None:
        self._buffer.cursor().execute("UPDATE canaries SET started_at = now() WHERE adapter_name = ?", [name])

    def close(self, name: str, outcome: CanaryOutcome, signals: dict[str, Any], reason: str | None) -> None:
        self._buffer.cursor().execute(
            "UPDATE canaries SET ended_at = now(), outcome = ?, signals = ?, reason = ?"
            " WHERE adapter_name = ?",
            [outcome, json.dumps(signals), reason, name],
        )

    def current(self) -> OpenCanary | None:
        """The newest window that has not ended."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT adapter_name, live_adapter, share, window_s, min_requests, started_at FROM canaries"
                " WHERE ended_at IS NULL ORDER BY started_at DESC LIMIT 1"
            )
            .fetchone()
        )
        return (
            None
            if row is None
            else OpenCanary(row[0], row[1], float(row[2]), float(row[3]), int(row[4]), row[5])
        )

    def recent(self, limit: int = 3) -> list[dict[str, Any]]:
        return rows_as_dicts(
            self._buffer.cursor().execute(
                "SELECT adapter_name, share, started_at, ended_at, outcome, reason FROM canaries"
                " ORDER BY started_at DESC LIMIT ?",
                [limit],
            )
        )
