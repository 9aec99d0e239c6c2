"""Which member runs the loop (training, evaluation, promotion, retention, policies) on a shared buffer,
and the fencing token that keeps a deposed leader from promoting.

On PostgreSQL, members campaign for a session-level advisory lock on a connection of their own. The
one that holds it leads: it starts a new term by adding one to `loop_leader.token` and runs the loop's
jobs; the others stand by and try again every `interval_s`. A leader that dies (kill -9, a lost host)
loses its session and with it the lock, so a standby leads within one interval of the server noticing.
A leader that merely loses its connection (a partition) stops its jobs when its next check fails, but
a job may still be mid-way: every decision of the loop's jobs (the safety screen, drift, the training
gate, promotion) therefore checks its term's token inside its own transaction (`Fence.check`, a
shared row lock on `loop_leader`), and is refused once a newer term has begun. The row lock also
orders the two: a new term cannot begin while a decision of the old one is being committed.

On DuckDB there is one daemon per file: it leads for good (`Fence.sole()`), and nothing is checked.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from evolvd.buffer.postgres_buffer import connect
from evolvd.buffer.sql import PostgresSql, Sql

logger = logging.getLogger("evolvd.leadership")

LOOP_LOCK = 0x65766F6C76644C  # "evolvdL": one lock per database, so one loop per shared buffer


class StaleLeaderError(RuntimeError):
    """A decision was made under a term that is over (or by a member that does not lead)."""


class Fence:
    """The token of the term this member leads in, checked by every decision of the loop's jobs."""

    def __init__(self, shared: bool) -> None:
        self._shared = shared
        self._token: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def sole(cls) -> Fence:
        """The only member of its loop (a DuckDB buffer): always leads, never checked."""
        return cls(shared=False)

    @property
    def token(self) -> int | None:
        with self._lock:
            return self._token

    @property
    def leads(self) -> bool:
        """Whether this member leads, as far as it knows (`check` confirms it against the shared row)."""
        return not self._shared or self.token is not None

    def begin_term(self, token: int) -> None:
        with self._lock:
            self._token = token

    def end_term(self) -> None:
        with self._lock:
            self._token = None

    def check(self, con: Sql) -> int | None:
        """The term's token, once the shared row says the term is still current; call it inside the
        decision's transaction (the row stays share-locked until it commits). Raises StaleLeaderError."""
        if not self._shared:
            return None
        token = self.token
        if token is None:
            raise StaleLeaderError("this member does not lead the loop: its decisions are refused")
        row = con.execute("SELECT token, holder FROM loop_leader WHERE id = 1 FOR SHARE").fetchone()
        current = int(row[0]) if row else None
        if current != token:
            raise StaleLeaderError(
                f"fencing token {token} is stale: term {current} of {row[1] if row else '?'} began since;"
                " this member's decision is refused"
            )
        return token


def start_term(con: Sql, holder: str) -> int:
    """Begin a new term (the caller holds the loop's lock): its token is one more than the last."""
    row = con.execute(
        "UPDATE loop_leader SET token = token + 1, holder = ?, elected_at = now()"
        " WHERE id = 1 RETURNING token",
        [holder],
    ).fetchone()
    assert row is not None, "loop_leader has its one row from migration 0011"
    return int(row[0])


def current_term(con: Sql) -> tuple[int, str | None]:
    """(token, holder) of the term in force."""
    row = con.execute("SELECT token, holder FROM loop_leader WHERE id = 1").fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


class Campaign:
    """Campaigns for the loop's lock on a connection of its own, and reports winning and losing it."""

    def __init__(
        self,
        url: str,
        holder: str,
        fence: Fence,
        on_elected: Callable[[int], None],
        on_deposed: Callable[[str], None],
        interval_s: float,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self.holder = holder
        self._fence = fence
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._interval_s = interval_s
        self._connect_timeout_s = connect_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._con: psycopg.Connection[Any] | None = None
        self.last_error: str | None = None

    @property
    def leading(self) -> bool:
        return self._fence.token is not None

    def start(self) -> None:
        """Campaign once now (a member that can lead leads before its daemon reports running), then
        every `interval_s` on a thread of its own."""
        self._attempt()
        self._thread = threading.Thread(target=self._run, name="evolvd-loop-campaign", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + self._connect_timeout_s + 5)
        if self.leading:
            self._depose("this member is stopping")
        self._close()  # ends the session: the lock goes with it

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._attempt()

    def _attempt(self) -> None:
        try:
            if self.leading:
                self._still_leading()
            else:
                self._try_to_lead()
            self.last_error = None
        except psycopg.Error as exc:
            self.last_error = f"{type(exc).__name__}: {exc}".strip()
            if self.leading:
                self._depose(f"lost the database connection ({self.last_error})")
            self._close()

    def _try_to_lead(self) -> None:
        con = self._connection()
        row = con.execute("SELECT pg_try_advisory_lock(%s)", [LOOP_LOCK]).fetchone()
        if not (row and row[0]):
            return
        token = start_term(PostgresSql(con), self.holder)
        self._fence.begin_term(token)
        logger.info("this member (%s) leads the loop: term %d", self.holder, token)
        try:
            self._on_elected(token)
        except Exception:
            logger.exception("the loop did not start in term %d: standing down for another member", token)
            self._depose("the loop did not start")
            self._close()

    def _still_leading(self) -> None:
        con = self._connection()
        con.execute("SELECT 1")  # the session (and the lock with it) is alive

    def _depose(self, reason: str) -> None:
        token = self._fence.token
        self._fence.end_term()
        logger.warning("this member (%s) no longer leads the loop (term %s): %s", self.holder, token, reason)
        self._on_deposed(reason)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._con is None or self._con.closed:
            self._con = connect(self._url, self._connect_timeout_s)
        return self._con

    def _close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(psycopg.Error):
                self._con.close()
            self._con = None
