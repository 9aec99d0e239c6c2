"""Freeze what a training run learns from: new usable examples plus a replay share of older ones,
as a Parquet file named by its content hash, with every example's id recorded (lineage).

Held-out prompts (a keyed hash slice, `evolvd.buffer.heldout`) never enter a snapshot: evaluation
scores candidates on them, so they must stay unseen by every adapter. A prompt sent many times gives
one event's examples, once."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from evolvd.buffer import transaction
from evolvd.buffer.heldout import heldout_condition, heldout_params, untrained_condition

Row = tuple[Any, ...]

# Training takes only safe texts: what the safety screen let through (allow) or redacted (redact).


@dataclass(frozen=True)
class Snapshot:
    dataset_id: str
    path: Path
    pairs_path: Path | None
    n_examples: int
    n_new: int
    n_replay: int
    n_pairs: int


def _new_examples(con: duckdb.DuckDBPyConnection, min_confidence: float, heldout_percent: int) -> list[Row]:
    rows: list[Row] = con.execute(
        "SELECT e.example_id, coalesce(e.safe_prompt, e.prompt), coalesce(e.safe_completion, e.completion)"  # noqa: S608
        " FROM training_examples e WHERE e.safety_outcome IN ('allow', 'redact') AND e.confidence >= ?"
        f" AND {untrained_condition('e')} ORDER BY e.example_id",
        [min_confidence, *heldout_params(con, heldout_percent)],
    ).fetchall()
    return rows


def _replay_examples(con: duckdb.DuckDBPyConnection, n: int, seed: str) -> list[Row]:
    """A pseudo-random sample (by hash with this snapshot's seed) of examples earlier runs used."""
    if n <= 0:
        return []
    rows: list[Row] = con.execute(
        "SELECT e.example_id, coalesce(e.safe_prompt, e.prompt), coalesce(e.safe_completion, e.completion)"
        " FROM training_examples e WHERE e.safety_outcome IN ('allow', 'redact')"
        " AND EXISTS (SELECT 1 FROM dataset_examples d WHERE d.example_id = e.example_id AND NOT d.replay)"
        " ORDER BY md5(? || CAST(e.example_id AS VARCHAR)) LIMIT ?",
        [seed, n],
    ).fetchall()
    return rows


def _pairs(con: duckdb.DuckDBPyConnection, example_ids: list[int], heldout_percent: int) -> list[Row]:
    # Pairs carry unscreened texts, so only events whose examples all passed as `allow` (nothing
    # redacted, nothing quarantined) give pairs to DPO.
    if not example_ids:
        return []
    rows: list[Row] = con.execute(
        "SELECT p.pair_id, p.prompt, p.chosen, p.rejected FROM preference_pairs p"  # noqa: S608
        f" WHERE NOT {heldout_condition('(SELECT prompt_hash FROM events WHERE id = p.event_id)')}"
        " AND NOT EXISTS (SELECT 1 FROM dataset_pairs d WHERE d.pair_id = p.pair_id)"
        " AND p.event_id IN (SELECT event_id FROM training_examples WHERE list_contains(?, example_id))"
        " AND NOT EXISTS (SELECT 1 FROM training_examples x WHERE x.event_id = p.event_id"
        "                 AND coalesce(x.safety_outcome, 'unscreened') <> 'allow')"
        " ORDER BY p.pair_id",
        [*heldout_params(con, heldout_percent), example_ids],
    ).fetchall()
    return rows


def _content_hash(examples: list[Row], pairs: list[Row]) -> str:
    digest = hashlib.sha256()
    for _, prompt, completion in examples:
        digest.update(json.dumps([prompt, completion]).encode() + b"\n")
    digest.update(b"--pairs--\n")
    for _, prompt, chosen, rejected in pairs:
        digest.update(json.dumps([prompt, chosen, rejected]).encode() + b"\n")
    return digest.hexdigest()


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # a crash leaves a stray .tmp, never a half-written snapshot


def freeze_snapshot(
    con: duckdb.DuckDBPyConnection,
    out_dir: Path,
    min_confidence: float,
    replay_share: float,
    heldout_percent: int,
    min_examples: int = 1,
) -> Snapshot | None:
    """Write and record a snapshot; None when fewer than `min_examples` new usable examples exist."""
    new = _new_examples(con, min_confidence, heldout_percent)
    if len(new) < max(min_examples, 1):
        return None
    n_replay = math.floor(len(new) * replay_share / (1 - replay_share)) if replay_share < 1 else 0
    replay = _replay_examples(con, n_replay, seed=str(new[-1][0]))
    pairs = _pairs(con, [int(r[0]) for r in new], heldout_percent)
    examples = new + replay
    dataset_id = _content_hash(examples, pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dataset_id[:16]}.parquet"
    _write_parquet(
        pa.table(
            {
                "example_id": [int(r[0]) for r in examples],
                "prompt": [r[1] for r in examples],
                "completion": [r[2] for r in examples],
                "replay": [False] * len(new) + [True] * len(replay),
            }
        ),
        path,
    )
    pairs_path = None
    if pairs:
        pairs_path = out_dir / f"{dataset_id[:16]}.pairs.parquet"
        _write_parquet(
            pa.table(
                {
                    "pair_id": [int(r[0]) for r in pairs],
                    "prompt": [r[1] for r in pairs],
                    "chosen": [r[2] for r in pairs],
                    "rejected": [r[3] for r in pairs],
                }
            ),
            pairs_path,
        )
    with transaction(con):
        con.execute(
            "INSERT INTO datasets (dataset_id, path, n_examples, n_pairs, source_query, n_replay, pairs_path)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                dataset_id,
                str(path),
                len(examples),
                len(pairs),
                f"usable examples >= confidence {min_confidence}, held-out {heldout_percent}% excluded, "
                f"replay share {replay_share}",
                len(replay),
                str(pairs_path) if pairs_path else None,
            ],
        )
        con.executemany(
            "INSERT INTO dataset_examples VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [(dataset_id, int(r[0]), False) for r in new] + [(dataset_id, int(r[0]), True) for r in replay],
        )
        if pairs:
            con.executemany(
                "INSERT INTO dataset_pairs VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(dataset_id, int(r[0])) for r in pairs],
            )
    return Snapshot(dataset_id, path, pairs_path, len(examples), len(new), len(replay), len(pairs))
