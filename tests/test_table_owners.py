"""Every buffer table has one owner: the module that writes it. SQL lives only in the tables' owners
and the few declared read models; the loop, the composition root and the HTTP surfaces hold none
(docs/ARCHITECTURE.md lists the owners). Read from the source with `ast`, so a new query in the wrong
place fails here, not in a review."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = (ROOT / "daemon", ROOT / "connectors", ROOT / "policies")

OWNERS = {
    "events": "daemon/buffer/duckdb_buffer.py",
    "feedback": "daemon/buffer/duckdb_buffer.py",
    "dead_letters": "daemon/buffer/duckdb_buffer.py",
    "kafka_offsets": "daemon/buffer/duckdb_buffer.py",
    "buffer_keys": "daemon/buffer/keys.py",
    "schema_migrations": "daemon/buffer/migrations.py",
    "samples": "daemon/labeling/labeler.py",
    "labels": "daemon/labeling/labeler.py",
    "critiques": "daemon/labeling/labeler.py",
    "refinements": "daemon/labeling/labeler.py",
    "preference_pairs": "daemon/labeling/labeler.py",
    "training_examples": "daemon/labeling/labeler.py",
    "datasets": "daemon/training/snapshot.py",
    "dataset_examples": "daemon/training/snapshot.py",
    "dataset_pairs": "daemon/training/snapshot.py",
    "runs": "daemon/training/runs.py",
    "adapters": "daemon/serving/registry.py",
    "swaps": "daemon/serving/registry.py",
    "canaries": "daemon/serving/canaries.py",
    "evaluations": "daemon/evaluation/store.py",
    "job_runs": "daemon/job_history.py",
    "policy_decisions": "policies/audit.py",
    "loop_leader": "daemon/buffer/leadership.py",
    "routing": "daemon/serving/routing_table.py",
    "served_requests": "daemon/serving/served_log.py",
}

COLUMN_OWNERS = {
    ("events", "daemon/labeling/labeler.py"): {"state", "claimed_by", "claimed_until"},
    ("training_examples", "policies/engine.py"): {
        "safe_prompt",
        "safe_completion",
        "safety_outcome",
        "safety_reasons",
    },
}
"""Columns another module owns on a row the table's owner created: an event's labeling state, an
example's safety-screen verdict."""

BACKENDS = {
    "daemon/buffer/postgres_buffer.py": ("daemon/buffer/duckdb_buffer.py", "daemon/buffer/migrations.py"),
    "daemon/buffer/postgres_functions.py": ("daemon/buffer/migrations.py",),
}
"""A second buffer backend: the same tables as these owners, written on PostgreSQL (and nothing else),
and the DuckDB functions it defines for the owners' SQL."""

RETENTION = "daemon/buffer/retention.py"
"""Ages rows out of every table (DELETE only, by age and policy): the one cross-table writer."""

READ_MODELS = {
    "daemon/buffer/heldout.py": "the keyed held-out slice, as SQL conditions the owners' queries embed",
    "daemon/buffer/sampling.py": "the keyed labeled share (labeling.sample_share), as a SQL condition",
    "policies/views.py": "what the policies read: prompt windows, unscreened and candidate examples",
}

_WRITE = re.compile(r"\b(?:INSERT INTO|DELETE FROM|UPDATE)\s+([a-z_]+)")
_SET = re.compile(r"\bUPDATE\s+([a-z_]+)\s+SET\s+(.*?)(?:\bWHERE\b|\bRETURNING\b|$)", re.S)
_SQL = re.compile(
    r"\b(?:SELECT\s.+\sFROM|INSERT INTO|DELETE FROM|UPDATE\s+[a-z_]+\s+SET|CREATE TABLE)\b", re.S
)


def _strings(tree: ast.Module) -> list[str]:
    """Every string the module builds but its docstrings: constants, and f-strings with their fields
    left out."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append("".join(str(v.value) if isinstance(v, ast.Constant) else " x " for v in node.values))
    return found


def _sql_by_module() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for folder in PACKAGE_DIRS:
        for path in sorted(folder.rglob("*.py")):
            sql = [s for s in _strings(ast.parse(path.read_text(encoding="utf-8"))) if _SQL.search(s)]
            if sql:
                out[str(path.relative_to(ROOT))] = sql
    return out


def test_the_owner_map_names_every_table_the_migrations_create() -> None:
    created = set()
    for migration in sorted((ROOT / "daemon" / "buffer" / "schema").glob("*.sql")):
        created |= set(re.findall(r"CREATE TABLE ([a-z_]+)", migration.read_text()))
    rebuilt = {t for t in created if t.endswith("_checked")}  # 0008's copies, renamed to the table
    assert created - rebuilt == set(OWNERS) - {"schema_migrations"}


def test_sql_lives_only_in_the_tables_owners_and_the_read_models() -> None:
    allowed = set(OWNERS.values()) | {module for _, module in COLUMN_OWNERS} | {RETENTION} | set(READ_MODELS)
    allowed |= set(BACKENDS)
    outside = {module: sql[:2] for module, sql in _sql_by_module().items() if module not in allowed}
    assert not outside, f"SQL outside the table owners (move it behind the owner's API): {outside}"


def test_each_table_is_written_only_by_its_owner() -> None:
    wrong: list[str] = []
    for module, statements in _sql_by_module().items():
        for sql in statements:
            for table in _WRITE.findall(sql):
                if table not in OWNERS:
                    continue  # a temporary table or a DuckDB relation of the module's own
                if module == OWNERS[table] or (module == RETENTION and f"DELETE FROM {table}" in sql):
                    continue
                if OWNERS[table] in BACKENDS.get(module, ()):
                    continue
                columns = COLUMN_OWNERS.get((table, module))
                updates = [
                    {c.split("=")[0].strip() for c in sets.split(",")}
                    for name, sets in _SET.findall(sql)
                    if name == table
                ]
                if columns is not None and updates and all(u <= columns for u in updates):
                    continue
                wrong.append(
                    f"{module} writes {table} (owner: {OWNERS[table]}): {' '.join(sql.split())[:120]}"
                )
    assert not wrong, "\n".join(wrong)


def test_the_loop_and_the_surfaces_hold_no_sql() -> None:
    sql = _sql_by_module()
    surfaces = [m for m in sql if m.startswith("daemon/loop/") or m in ("daemon/app.py", "daemon/admin.py")]
    assert not surfaces, surfaces
