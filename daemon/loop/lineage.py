"""An adapter's lineage: its manifest, the run that trained it, the snapshot it learned from, the
Kafka offsets of every event behind that snapshot, its evaluations and the decisions about it,
and its parents in turn (a continued adapter learned from its parent's data too).

Composed from the tables' owners; this module holds no SQL."""

from __future__ import annotations

from typing import Any

from evolvd.buffer import Buffer
from evolvd.evaluation.store import EvaluationStore
from evolvd.policies.audit import decisions_about
from evolvd.serving.registry import AdapterRegistry
from evolvd.training.runs import RunStore
from evolvd.training.snapshot import dataset_offsets, dataset_record


def adapter_lineage(buffer: Buffer, name: str, max_depth: int = 20) -> dict[str, Any] | None:
    chain: list[dict[str, Any]] = []
    current: str | None = name
    while current is not None and len(chain) < max_depth:
        node = _one(buffer, current)
        if node is None:
            break
        chain.append(node)
        current = node["parent"]
    return None if not chain else {"adapter": chain[0], "ancestors": chain[1:]}


def _one(buffer: Buffer, name: str) -> dict[str, Any] | None:
    registry = AdapterRegistry(buffer)
    node = registry.record(name)
    if node is None:
        return None
    node["run"] = RunStore(buffer).get(node["run_id"])
    dataset_id = node["run"]["dataset_id"] if node["run"] else None
    con = buffer.cursor()
    node["dataset"] = dataset_record(con, dataset_id)
    node["kafka_offsets"] = dataset_offsets(con, dataset_id)
    node["evaluations"] = EvaluationStore(buffer).of_adapter(name)
    node["decisions"] = decisions_about(con, "adapter", name)
    node["swaps"] = registry.swaps_of(name)
    return node
