"""The connection the tables' owners write through, on either backend.

The owners write their SQL once, with `?` placeholders, in the dialect DuckDB and PostgreSQL share; a
DuckDB connection runs it as it is, `PostgresSql` hands it to psycopg with `%s` placeholders. The few
statements that must differ (skip-locked claims) check for a `PostgresSql`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg


class Rows(Protocol):
    def fetchone(self) -> tuple[Any, ...] | None: ...

    def fetchall(self) -> list[tuple[Any, ...]]: ...


class Sql(Protocol):
    """One connection, used by one thread at a time; begin/commit/rollback frame a transaction
    (evolvd.buffer.transaction)."""

    def execute(self, query: str, parameters: Sequence[object] | None = None) -> Rows: ...

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

    def begin(self) -> None:
        self._con.execute(b"BEGIN")

    def commit(self) -> None:
        self._con.execute(b"COMMIT")

    def rollback(self) -> None:
        self._con.execute(b"ROLLBACK")
