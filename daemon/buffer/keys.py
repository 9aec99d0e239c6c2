"""Secrets stored in the buffer (table `buffer_keys`), created on first use.

DuckDB's own random functions are not cryptographic, so a key is drawn with Python's `secrets`."""

from __future__ import annotations

import secrets

from evolvd.buffer.sql import Sql

HELDOUT_KEY = "heldout"
CAPTURE_SEAL_KEY = "capture_seal"
SAMPLE_KEY = "labeling_sample"


def buffer_key(con: Sql, name: str) -> str:
    """The key called `name`, created (256 random bits, hex) the first time it is asked for."""
    row = con.execute("SELECT value FROM buffer_keys WHERE name = ?", [name]).fetchone()
    if row is None:
        # Two threads asking at once: the first insert wins and both read the same value back.
        con.execute(
            "INSERT INTO buffer_keys (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
            [name, secrets.token_hex(32)],
        )
        row = con.execute("SELECT value FROM buffer_keys WHERE name = ?", [name]).fetchone()
    assert row is not None
    return str(row[0])
