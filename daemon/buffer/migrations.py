"""Versioned schema for the buffer: numbered SQL files applied in order, each in its own transaction."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import duckdb

logger = logging.getLogger("evolvd.buffer")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer evolvd; opening it could corrupt what that version wrote."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    """The migrations shipped with this evolvd, in version order (versions must be 1, 2, 3, ...)."""
    folder = resources.files("evolvd.buffer") / "schema"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    expected = list(range(1, len(found) + 1))
    if [m.version for m in found] != expected:
        raise RuntimeError(f"buffer migrations are not numbered 1..N: {[m.version for m in found]}")
    return found


_POSTGRES_TYPES = (
    (re.compile(r"\bDOUBLE\b(?! PRECISION)"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def postgres_sql(sql: str) -> str:
    """A migration's DuckDB DDL as PostgreSQL reads it. The schema files use the types both share
    (VARCHAR, BIGINT, JSON, TIMESTAMPTZ, sequences, CHECK); only these two are spelled differently, so
    both backends are built from one schema."""
    for pattern, replacement in _POSTGRES_TYPES:
        sql = pattern.sub(replacement, sql)
    return sql


def refuse_newer(version: int, latest: int, where: str, remedy: str) -> None:
    """A buffer a newer evolvd migrated is not opened: writing it could corrupt what that version wrote."""
    if version > latest:
        raise SchemaTooNewError(
            f"buffer {where} has schema version {version}, but this evolvd understands up to {latest}: "
            + remedy
        )


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    )
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection, path: str, migrations: list[Migration] | None = None) -> int:
    """Bring the schema up to date; idempotent. Returns the version now in force."""
    migrations = bundled_migrations() if migrations is None else migrations
    latest = migrations[-1].version if migrations else 0
    version = current_version(con)
    refuse_newer(version, latest, path, "run a newer evolvd, or restore a backup taken before the upgrade")
    for migration in migrations:
        if migration.version <= version:
            continue
        logger.info("applying buffer migration %04d_%s to %s", migration.version, migration.name, path)
        con.begin()
        try:
            con.execute(migration.sql)
            con.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        version = migration.version
    return version
