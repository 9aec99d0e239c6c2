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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evolvd.buffer import rows_as_dicts, transaction
from evolvd.buffer.heldout import heldout_condition, heldout_params, untrained_condition
from evolvd.buffer.sql import Sql

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
    n_anchor: int = 0
    """Safety anchor rows (refusals to harmful requests, training.safety_anchor_share)."""


def _new_examples(con: Sql, min_confidence: float, heldout_percent: int) -> list[Row]:
    rows: list[Row] = con.execute(
        "SELECT e.example_id, coalesce(e.safe_prompt, e.prompt), coalesce(e.safe_completion, e.completion)"  # noqa: S608
        " FROM training_examples e WHERE e.safety_outcome IN ('allow', 'redact') AND e.confidence >= ?"
        f" AND {untrained_condition('e')} ORDER BY e.example_id",
        [min_confidence, *heldout_params(con, heldout_percent)],
    ).fetchall()
    return rows


def _replay_examples(con: Sql, n: int, seed: str) -> list[Row]:
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


def _pairs(con: Sql, example_ids: list[int], heldout_percent: int) -> list[Row]:
    # Pairs carry unscreened texts, so only events whose examples all passed as `allow` (nothing
    # redacted, nothing quarantined) give pairs to DPO.
    if not example_ids:
        return []
    rows: list[Row] = con.execute(
        "SELECT p.pair_id, p.prompt, p.chosen, p.rejected FROM preference_pairs p"  # noqa: S608
        f" WHERE NOT {heldout_condition('(SELECT prompt_hash FROM events WHERE id = p.event_id)')}"
        " AND NOT EXISTS (SELECT 1 FROM dataset_pairs d WHERE d.pair_id = p.pair_id)"
        " AND p.event_id IN (SELECT event_id FROM training_examples"
        "                    WHERE example_id IN (SELECT unnest(CAST(? AS BIGINT[]))))"
        " AND NOT EXISTS (SELECT 1 FROM training_examples x WHERE x.event_id = p.event_id"
        "                 AND coalesce(x.safety_outcome, 'unscreened') <> 'allow')"
        " ORDER BY p.pair_id",
        [*heldout_params(con, heldout_percent), example_ids],
    ).fetchall()
    return rows


def anchor_rows(anchors: Sequence[tuple[str, str]], n: int, seed: str) -> list[tuple[str, str]]:
    """`n` of the safety anchor examples in an order fixed by `seed` (each once before any repeats)."""
    if n <= 0 or not anchors:
        return []
    order = sorted(anchors, key=lambda a: hashlib.sha256(f"{seed}:{a[0]}".encode()).hexdigest())
    return [order[i % len(order)] for i in range(n)]


def rows_for_share(n_rows: int, share: float) -> int:
    """Rows to add to `n_rows` others so that they make `share` of the result (replay, anchors)."""
    return math.floor(n_rows * share / (1 - share)) if 0 < share < 1 else 0


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
    con: Sql,
    out_dir: Path,
    min_confidence: float,
    replay_share: float,
    heldout_percent: int,
    min_examples: int = 1,
    anchors: Sequence[tuple[str, str]] = (),
    anchor_share: float = 0.0,
) -> Snapshot | None:
    """Write and record a snapshot; None when fewer than `min_examples` new usable examples exist.
    `anchors`: the safety anchor examples, `anchor_share` of the snapshot drawn from them."""
    new = _new_examples(con, min_confidence, heldout_percent)
    if len(new) < max(min_examples, 1):
        return None
    n_replay = rows_for_share(len(new), replay_share)
    replay = _replay_examples(con, n_replay, seed=str(new[-1][0]))
    pairs = _pairs(con, [int(r[0]) for r in new], heldout_percent)
    anchored = [
        (None, prompt, completion)
        for prompt, completion in anchor_rows(
            anchors, rows_for_share(len(new) + len(replay), anchor_share), seed=str(new[-1][0])
        )
    ]
    examples = new + replay
    dataset_id = _content_hash(examples + anchored, pairs)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dataset_id[:16]}.parquet"
    rows = examples + anchored
    _write_parquet(
        pa.table(
            {
                "example_id": pa.array([r[0] for r in rows], pa.int64()),  # null: a safety anchor row
                "prompt": [r[1] for r in rows],
                "completion": [r[2] for r in rows],
                "replay": [False] * len(new) + [True] * len(replay) + [False] * len(anchored),
                "anchor": [False] * len(examples) + [True] * len(anchored),
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
            "INSERT INTO datasets"
            " (dataset_id, path, n_examples, n_pairs, source_query, n_replay, pairs_path, n_anchor)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                dataset_id,
                str(path),
                len(rows),
                len(pairs),
                f"usable examples >= confidence {min_confidence}, held-out {heldout_percent}% excluded, "
                f"replay share {replay_share}, safety anchor share {anchor_share}",
                len(replay),
                str(pairs_path) if pairs_path else None,
                len(anchored),
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
    return Snapshot(dataset_id, path, pairs_path, len(rows), len(new), len(replay), len(pairs), len(anchored))


# -- reads of the data sets this module recorded --------------------------------------------------


def stored_snapshot(con: Sql, dataset_id: str) -> Snapshot | None:
    """A recorded snapshot again (a failed run is retried on the same data set)."""
    row = con.execute(
        "SELECT path, pairs_path, n_examples, n_replay, n_pairs, n_anchor FROM datasets WHERE dataset_id = ?",
        [dataset_id],
    ).fetchone()
    if row is None:
        return None
    n_examples, n_replay, n_anchor = int(row[2]), int(row[3]), int(row[5])
    return Snapshot(
        dataset_id,
        Path(row[0]),
        Path(row[1]) if row[1] else None,
        n_examples,
        n_examples - n_replay - n_anchor,
        n_replay,
        int(row[4]),
        n_anchor,
    )


def stale_dataset_files(con: Sql, keep: int) -> list[Path]:
    """The Parquet files of every data set but the newest `keep` (retention deletes them)."""
    rows = con.execute(
        "SELECT path, pairs_path FROM datasets ORDER BY created_at DESC OFFSET ?", [keep]
    ).fetchall()
    return [Path(p) for row in rows for p in row if p]


def dataset_record(con: Sql, dataset_id: str | None) -> dict[str, Any] | None:
    rows = rows_as_dicts(con.execute("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id]))
    return rows[0] if rows else None


def dataset_offsets(con: Sql, dataset_id: str | None) -> list[dict[str, Any]]:
    """Per topic and partition, the Kafka offsets of every event behind a data set (lineage)."""
    return rows_as_dicts(
        con.execute(
            "SELECT ev.topic, ev.kafka_partition AS partition, count(DISTINCT ev.id) AS events,"
            " min(ev.kafka_offset) AS first_offset, max(ev.kafka_offset) AS last_offset,"
            " array_agg(DISTINCT ev.kafka_offset ORDER BY ev.kafka_offset) AS offsets"
            " FROM dataset_examples d JOIN training_examples x ON x.example_id = d.example_id"
            " JOIN events ev ON ev.id = x.event_id WHERE d.dataset_id = ?"
            " GROUP BY ev.topic, ev.kafka_partition ORDER BY ev.topic, partition",
            [dataset_id],
        )
    )
