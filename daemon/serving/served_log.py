"""The `served_requests` table's one owner: the outcomes of alias-routed requests that gateway members
(`evolvd run --role gateway`) served while a canary ran.

A member keeps its outcomes in memory and writes them here about once a second; the daemon that judges
the canary joins them with its own gateway's (evolvd.serving.served_stats), so the verdict counts
every gateway's traffic. Outside canary windows nothing is written: nothing reads it then."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from evolvd.buffer import Buffer
from evolvd.serving.served_stats import Outcome

KEEP_S = 24 * 3600.0
"""Outcomes older than this are deleted by the member that writes (a canary window is minutes long)."""

MAX_PENDING = 100_000
"""Outcomes held between writes at most: while the buffer is unreachable the oldest are dropped (a
canary verdict on fewer requests), rather than a gateway's memory growing without bound."""


class ServedLog:
    def __init__(self, buffer: Buffer) -> None:
        self._buffer = buffer

    def write(self, gateway: str, outcomes: list[tuple[str, Outcome]]) -> None:
        """(model, outcome) rows, in one statement; and what is past KEEP_S, deleted."""
        con = self._buffer.cursor()
        con.executemany(
            "INSERT INTO served_requests (gateway, model, served_at, ok, seconds) VALUES (?, ?, ?, ?, ?)",
            [[gateway, model, o.at, o.ok, o.seconds] for model, o in outcomes],
        )
        con.execute("DELETE FROM served_requests WHERE served_at < ?", [time.time() - KEEP_S])

    def since(self, model: str, started_at: float) -> list[Outcome]:
        rows = (
            self._buffer.cursor()
            .execute(
                "SELECT served_at, ok, seconds FROM served_requests WHERE model = ? AND served_at >= ?"
                " ORDER BY served_at",
                [model, started_at],
            )
            .fetchall()
        )
        return [Outcome(float(at), bool(ok), float(seconds)) for at, ok, seconds in rows]


class ServedOutbox:
    """A member's outcomes between writes: recorded by its gateway while a canary runs, written by
    its routing follower (`flush`)."""

    def __init__(self, log: ServedLog, gateway: str, canary_running: Callable[[], bool]) -> None:
        self._log = log
        self._gateway = gateway
        self._canary_running = canary_running
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, Outcome]] = deque(maxlen=MAX_PENDING)
        self.dropped = 0
        """Outcomes dropped unwritten (MAX_PENDING) since the member started."""

    def record(self, model: str, ok: bool, seconds: float) -> None:
        if not self._canary_running():
            return
        with self._lock:
            if len(self._pending) == MAX_PENDING:
                self.dropped += 1  # the oldest goes
            self._pending.append((model, Outcome(time.time(), ok, seconds)))

    def flush(self) -> int:
        """Write what is pending; on failure it stays pending for the next flush (and raises). Nothing
        pending (no canary running): no query, though the follower calls this on every poll."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        if not pending:
            return 0
        try:
            self._log.write(self._gateway, pending)
        except BaseException:
            with self._lock:  # back in front of what came meanwhile; past the bound the oldest go
                kept = pending + list(self._pending)
                self.dropped += max(0, len(kept) - MAX_PENDING)
                self._pending = deque(kept, maxlen=MAX_PENDING)
            raise
        return len(pending)
