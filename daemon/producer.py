"""Publish JSON Lines to the prompts topic (for `evolvd produce`, demos, tests and benchmarks)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from evolvd.config import KafkaConfig
from evolvd.connectors.kafka_source import KafkaUnavailableError, client_options, wait_for_any_broker

logger = logging.getLogger("evolvd.produce")


def _key_of(line: bytes) -> bytes | None:
    """The message `id` as the Kafka key, so one id always lands in one partition (order for feedback)."""
    try:
        doc = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):  # lines are published as-is, even ones the daemon rejects
        return None
    ident = doc.get("id") if isinstance(doc, dict) else None
    return ident.encode() if isinstance(ident, str) else None


def publish_lines(config: KafkaConfig, bootstrap_servers: str, topic: str, lines: Iterable[bytes]) -> int:
    wait_for_any_broker(config, bootstrap_servers)
    try:
        producer = KafkaProducer(**client_options(config, bootstrap_servers), linger_ms=5, acks="all")
    except KafkaTimeoutError as exc:
        raise KafkaUnavailableError(f"no Kafka broker answered at {bootstrap_servers}") from exc
    sent = 0
    try:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            producer.send(topic, value=line, key=_key_of(line))
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent
