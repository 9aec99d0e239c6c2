"""Which prompts are held out: evaluation scores candidates on them, so no snapshot may hold them.

Membership is a keyed hash of the prompt (`events.prompt_hash`), not of the producer-chosen message
id: a producer who does not know the buffer's key cannot choose what is held out, and every copy of
one prompt falls on the same side, so a prompt repeated in the stream cannot be trained on and
scored on at once. md5_number is computed by DuckDB the same way in every version."""

from __future__ import annotations

import hashlib

import duckdb

from evolvd.buffer.keys import HELDOUT_KEY, buffer_key
from evolvd.buffer.sql import Sql


def heldout_condition(prompt_hash_column: str) -> str:
    """SQL true for a held-out prompt; its two parameters are `heldout_params(...)`."""
    return f"((md5_number(? || {prompt_hash_column}) % 100) < ?)"


def heldout_params(con: Sql, heldout_percent: int) -> list[object]:
    return [buffer_key(con, HELDOUT_KEY), heldout_percent]


def is_heldout(key: str, prompt_hash: str, heldout_percent: int) -> bool:
    """The same rule outside a buffer (a test choosing prompts for each side needs it)."""
    return heldout_sides(key, [prompt_hash], heldout_percent)[0]


def heldout_sides(key: str, prompt_hashes: list[str], heldout_percent: int) -> list[bool]:
    """`is_heldout` for many prompts in one query."""
    with duckdb.connect() as con:
        rows = con.execute(
            f"SELECT {heldout_condition('h')} FROM unnest(?) WITH ORDINALITY AS t(h, n) ORDER BY n",  # noqa: S608
            [key, heldout_percent, prompt_hashes],
        ).fetchall()
    return [bool(r[0]) for r in rows]


def choose_prompts(key: str, prompts: list[str], count: int, heldout_percent: int) -> list[str]:
    """`count` of `prompts` (in their order) of which round(count * heldout_percent / 100) fall in the
    held-out slice and the rest outside it: a harness streaming a few prompts gets the share it asked
    for on each side, not the luck of a random key. Raises ValueError when `prompts` run out."""
    # The buffer's prompt_hash is DuckDB's sha256 of the prompt text, hex-encoded like hashlib's.
    sides = heldout_sides(key, [hashlib.sha256(p.encode()).hexdigest() for p in prompts], heldout_percent)
    wanted_heldout = round(count * heldout_percent / 100)
    want = {True: wanted_heldout, False: count - wanted_heldout}
    chosen = []
    for prompt, side in zip(prompts, sides, strict=True):
        if want[side] > 0:
            want[side] -= 1
            chosen.append(prompt)
    if len(chosen) < count:
        raise ValueError(f"only {len(chosen)} of {count} prompts fit the held-out share {heldout_percent}%")
    return chosen


def untrained_condition(example: str = "e") -> str:
    """SQL true for training example `example` a new snapshot may take: no snapshot took it, its
    prompt is outside the held-out slice, no snapshot took any example of the same prompt, and its
    event is the first of that prompt's events with examples (one prompt sent a thousand times is
    one prompt: it cannot outweigh the rest of a snapshot). Parameters: `heldout_params(...)`."""
    # Aliases come from this package's callers, never from data; values go through parameters.
    prompt_of = f"(SELECT prompt_hash FROM events WHERE id = {example}.event_id)"  # noqa: S608
    return (
        f"NOT EXISTS (SELECT 1 FROM dataset_examples d WHERE d.example_id = {example}.example_id)"  # noqa: S608
        f" AND NOT {heldout_condition(prompt_of)}"
        " AND NOT EXISTS (SELECT 1 FROM dataset_examples d JOIN training_examples t ON t.example_id ="
        " d.example_id JOIN events ev ON ev.id = t.event_id"
        f" WHERE NOT d.replay AND ev.prompt_hash = {prompt_of})"
        f" AND {example}.event_id = (SELECT min(t.event_id) FROM training_examples t JOIN events ev"
        f" ON ev.id = t.event_id WHERE ev.prompt_hash = {prompt_of})"
    )
