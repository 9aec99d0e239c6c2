"""Which prompts are labeled when `labeling.sample_share` < 1: a keyed hash of the prompt, like the
held-out slice (evolvd.buffer.heldout) but with a key of its own, so the two choices are independent.

Labeling then need not keep up with the whole stream: the labeler marks the events outside the share
`unsampled` (labeling.labeler.mark_unsampled; kept for drift windows and lineage, aged out by
retention), and the ingest backlog counts only the share, so backpressure applies to what will be
labeled. Every copy of a prompt falls on the
same side, and a producer who does not know the buffer's key cannot choose what is labeled."""

from __future__ import annotations

from evolvd.buffer.keys import SAMPLE_KEY, buffer_key
from evolvd.buffer.sql import Sql

BUCKETS = 10_000
"""The share's resolution: 0.01% of the distinct prompts."""


def sampled_condition(prompt_hash_column: str) -> str:
    """SQL true for a prompt inside the labeled share; its two parameters are `sampled_params(...)`."""
    return f"((md5_number(? || {prompt_hash_column}) % {BUCKETS}) < ?)"


def sampled_params(con: Sql, share: float) -> list[object]:
    return [buffer_key(con, SAMPLE_KEY), round(share * BUCKETS)]


def sampled_backlog(con: Sql, share: float) -> int:
    """Distinct pending prompts inside the labeled share (the others wait for nobody)."""
    row = con.execute(
        "SELECT count(DISTINCT prompt_hash) FROM events"  # noqa: S608
        f" WHERE state = 'pending' AND {sampled_condition('prompt_hash')}",
        sampled_params(con, share),
    ).fetchone()
    return int(row[0]) if row else 0
