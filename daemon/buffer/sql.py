"""The connection the tables' owners write through, on either backend, and the buffer that hands it out.

The owners write their SQL once, with `?` placeholders, in the dialect DuckDB and PostgreSQL share; a
DuckDB connection runs it as it is, `PostgresSql` hands it to psycopg with `%s` placeholders. The few
DuckDB functions the owners use that PostgreSQL lacks (md5_number, to_seconds) are defined in the
shared database (evolvd.buffer.postgres_functions); the few statements that must differ (skip-locked
claims, deleted-row counts) check for a `PostgresSql`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg


class Rows(Protocol):
    @property
    def description(self) -> Any: ...

    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...


class Sql(Protocol):
    """One connection, used by one thread at a time; begin/commit/rollback frame a transaction
    (evolvd.buffer.transaction)."""

    def execute(self, query: str, parameters: Sequence[object] | None = None) -> Rows: ...

    def executemany(self, query: str, parameters: Sequence[Sequence[object]]) -> Any: ...

    def begin(self) -> Any: ...

    def commit(self) -> Any: ...

    def rollback(self) -> Any: ...


@functools.lru_cache(maxsize=512)
def pyformat(query: str) -> str:
    """`?` placeholders as psycopg's `%s`, and a literal `%` doubled; quoted text is left alone."""
    out: list[str] = []
    quote: str | None = None
    for char in query:
        if quote is not None:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


class PostgresSql:
    """A psycopg connection in autocommit mode, speaking the owners' `?` dialect."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._con = connection

    def execute(self, query: str, parameters: Sequence[object] | None = None) -> Rows:
        return self._con.execute(pyformat(query), parameters)

    def executemany(self, query: str, parameters: Sequence[Sequence[object]]) -> None:
        with self._con.cursor() as cur:
            cur.executemany(pyformat(query), parameters)

    def begin(self) -> None:
        self._con.execute(b"BEGIN")

    def commit(self) -> None:
        self._con.execute(b"COMMIT")

    def rollback(self) -> None:
        self._con.execute(b"ROLLBACK")

    def rowcount(self, query: str, parameters: Sequence[object] | None = None) -> int:
        return self._con.execute(pyformat(query), parameters).rowcount


def affected_rows(con: Sql, query: str, parameters: Sequence[object] | None = None) -> int:
    """Run a DELETE or UPDATE and return how many rows it changed: DuckDB answers with a row holding
    the count, psycopg with the cursor's rowcount."""
    if isinstance(con, PostgresSql):
        return con.rowcount(query, parameters)
    row = con.execute(query, parameters).fetchone()
    return int(row[0]) if row else 0


class Buffer(Protocol):
    """Either backend's buffer (evolvd.buffer.DuckDBBuffer, evolvd.buffer.postgres_buffer.PostgresBuffer),
    as the tables' owners and the daemon's parts use it."""

    schema_version: int
    sample_share: float
    """labeling.sample_share: the share of distinct prompts labeled (evolvd.buffer.sampling)."""

    def cursor(self) -> Sql:
        """This thread's connection."""
        ...

    def backlog(self) -> int: ...

    def feedback_on(self, served_by: str, since: dt.datetime) -> list[tuple[str, str | None, float]]: ...

    def table_counts(self) -> dict[str, int]: ...

    def dead_letters_by_reason(self) -> dict[str, int]: ...

    def events_by_state(self) -> dict[str, int]: ...

    def stored_offsets(self, topic: str) -> dict[int, int]: ...

    def close(self) -> None: ...
