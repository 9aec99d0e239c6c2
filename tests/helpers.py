"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def prompt_message(i: int, **extra: Any) -> bytes:
    return json.dumps({"id": f"msg-{i:06d}", "prompt": f"What is {i} + 1?", **extra}).encode()


def produce(bootstrap: str, topic: str, values: Sequence[bytes | None], partition: int | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for n, value in enumerate(values):
        # A key on every record: a tombstone (value None) is only valid with one.
        producer.send(topic, key=f"k{n}".encode(), value=value, partition=partition)
    producer.flush()
    producer.close()


def run_cli(*args: str, env: Mapping[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `evolvd` command as an operator would (a separate process), capturing its output."""
    return subprocess.run([sys.executable, "-m", "evolvd.cli", *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip
