"""Every Kafka producer evolvd runs: the gateway's capture, the demo workload and `evolvd produce`
all publish through `KafkaPublisher` (the daemon speaks `evolvd.abc.Publisher`, so the log stays
swappable)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from evolvd.abc import Publisher
from evolvd.config import KafkaConfig
from evolvd.connectors.kafka_source import KafkaUnavailableError, client_options, wait_for_any_broker


class KafkaPublisher(Publisher):
    """One topic's producer (kafka-python's producer is thread-safe)."""

    def __init__(
        self,
        config: KafkaConfig,
        bootstrap_servers: str,
        topic: str,
        linger_ms: int = 20,
        acks: int | str = 1,
    ) -> None:
        self._topic = topic
        try:
            self._producer = KafkaProducer(
                **client_options(config, bootstrap_servers), linger_ms=linger_ms, acks=acks
            )
        except KafkaTimeoutError as exc:
            raise KafkaUnavailableError(f"no Kafka broker answered at {bootstrap_servers}") from exc

    def publish(self, value: bytes, key: bytes | None) -> None:
        self._producer.send(self._topic, value=value, key=key)

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self._producer.flush(timeout=timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)


def _key_of(line: bytes) -> bytes | None:
    """The message `id` as the Kafka key, so one id always lands in one partition (order for feedback)."""
    try:
        doc = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):  # lines are published as-is, even ones the daemon rejects
        return None
    ident = doc.get("id") if isinstance(doc, dict) else None
    return ident.encode() if isinstance(ident, str) else None


def publish_lines(config: KafkaConfig, bootstrap_servers: str, topic: str, lines: Iterable[bytes]) -> int:
    """Publish JSON Lines to a topic as they are (`evolvd produce`), each keyed by its `id`; waits for
    every broker acknowledgement (acks=all)."""
    wait_for_any_broker(config, bootstrap_servers)
    publisher = KafkaPublisher(config, bootstrap_servers, topic, linger_ms=5, acks="all")
    sent = 0
    try:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            publisher.publish(line, _key_of(line))
            sent += 1
    finally:
        publisher.close()
    return sent
