"""An adapter's lineage: its manifest, the run that trained it, the snapshot it learned from, the
Kafka offsets of every event behind that snapshot, its evaluations and the decisions about it,
and its parents in turn (a continued adapter learned from its parent's data too)."""

from __future__ import annotations

import json
from typing import Any

import duckdb

from evolvd.buffer import rows_as_dicts


def adapter_lineage(con: duckdb.DuckDBPyConnection, name: str, max_depth: int = 20) -> dict[str, Any] | None:
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None and len(chain) < max_depth:
        node = _one(con, current)
        if node is None:
            break
        chain.append(node)
        current = node["parent"]
    return None if not chain else {"adapter": chain[0], "ancestors": chain[1:]}


def _one(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any] | None:
    adapters = rows_as_dicts(
        con.execute(
            "SELECT name, version, status, parent, reason, path, run_id, manifest, created_at, updated_at"
            " FROM adapters WHERE name = ?",
            [name],
        )
    )
    if not adapters:
        return None
    node = adapters[0]
    node["manifest"] = json.loads(node["manifest"])
    run = rows_as_dicts(con.execute("SELECT * FROM runs WHERE run_id = ?", [node["run_id"]]))
    node["run"] = run[0] if run else None
    dataset_id = node["run"]["dataset_id"] if node["run"] else None
    dataset = rows_as_dicts(con.execute("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id]))
    node["dataset"] = dataset[0] if dataset else None
    node["kafka_offsets"] = rows_as_dicts(
        con.execute(
            "SELECT ev.topic, ev.kafka_partition AS partition, count(DISTINCT ev.id) AS events,"
            " min(ev.kafka_offset) AS first_offset, max(ev.kafka_offset) AS last_offset,"
            " list(DISTINCT ev.kafka_offset ORDER BY ev.kafka_offset) AS offsets"
            " FROM dataset_examples d JOIN training_examples x ON x.example_id = d.example_id"
            " JOIN events ev ON ev.id = x.event_id WHERE d.dataset_id = ?"
            " GROUP BY ev.topic, ev.kafka_partition ORDER BY ev.topic, partition",
            [dataset_id],
        )
    )
    node["evaluations"] = rows_as_dicts(
        con.execute(
            "SELECT suite, baseline_name, score, baseline_score, p_value, details, created_at"
            " FROM evaluations WHERE adapter_name = ? ORDER BY evaluation_id",
            [name],
        )
    )
    node["decisions"] = rows_as_dicts(
        con.execute(
            "SELECT policy, outcome, reasons, created_at FROM policy_decisions"
            " WHERE subject_kind = 'adapter' AND subject_id = ? ORDER BY decision_id",
            [name],
        )
    )
    node["swaps"] = rows_as_dicts(
        con.execute(
            "SELECT action, outcome, from_adapter, to_adapter, reason, created_at FROM swaps"
            " WHERE from_adapter = ? OR to_adapter = ? ORDER BY swap_id",
            [name, name],
        )
    )
    return node
