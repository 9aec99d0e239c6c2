"""The Kafka source: a consumer-group member whose positions come from the buffer, not from Kafka.

Offsets committed to Kafka are informational (they let standard tools show the group's lag); on
every assignment the member seeks to the offsets stored in the buffer, which were written in the
same transaction as the events. Not thread-safe, like KafkaConsumer: use it from one thread.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from evolvd.abc import PartitionLag, Source, SourceRecord
from evolvd.config import KafkaConfig

logger = logging.getLogger("evolvd.kafka")

StoredOffsets = Callable[[], Mapping[int, int]]
"""partition → next offset to read, from the buffer."""


class KafkaUnavailableError(RuntimeError):
    pass


def client_options(config: KafkaConfig, bootstrap_servers: str) -> dict[str, Any]:
    """Connection settings shared by the consumer, producer and admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers.split(","),
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "bootstrap_timeout_ms": int(config.connect_timeout_s * 1000),
    }
    if config.sasl_mechanism is not None:
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_username
        if config.sasl_password_env:
            options["sasl_plain_password"] = os.environ.get(config.sasl_password_env)
    if config.ssl_cafile is not None:
        options["ssl_cafile"] = str(config.ssl_cafile)
    return options


def wait_for_any_broker(config: KafkaConfig, bootstrap_servers: str) -> None:
    """Return once one bootstrap server accepts a TCP connection; else raise KafkaUnavailableError.

    Checked with a plain socket before any kafka-python client is built: kafka-python 3.0 starts a
    network thread in each client's constructor and leaves it running when bootstrap fails, so a
    daemon retrying through a long outage would pile those threads up.
    """
    deadline = time.monotonic() + config.connect_timeout_s
    addresses = [server.rsplit(":", 1) for server in bootstrap_servers.split(",")]
    while True:
        for host, port in addresses:
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                    return
            except (OSError, ValueError):
                continue
        if time.monotonic() >= deadline:
            raise KafkaUnavailableError(
                f"no Kafka broker answered at {bootstrap_servers} within {config.connect_timeout_s:g}s"
            )
        time.sleep(0.2)


def ensure_topic(config: KafkaConfig, bootstrap_servers: str, partitions: int) -> None:
    """Create the prompts topic if it is missing. Raises KafkaUnavailableError when no broker answers."""
    wait_for_any_broker(config, bootstrap_servers)
    try:
        admin = KafkaAdminClient(**client_options(config, bootstrap_servers))
    except KafkaTimeoutError as exc:
        raise KafkaUnavailableError(
            f"no Kafka broker answered at {bootstrap_servers} within {config.connect_timeout_s:g}s"
        ) from exc
    try:
        if config.topic in admin.list_topics():
            return
        admin.create_topics([NewTopic(config.topic, partitions, 1)])
        logger.info("created topic %s with %d partitions", config.topic, partitions)
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def partition_lags(
    highwaters: Mapping[tuple[str, int], int | None], stored: Mapping[int, int], auto_offset_reset: str
) -> list[PartitionLag]:
    """Lag per assigned partition: the broker's end minus the buffer's stored position."""
    out = []
    for (topic, partition), highwater in sorted(highwaters.items(), key=lambda item: item[0][1]):
        position = stored.get(partition)
        if position is None and highwater is not None:
            # Never stored: reading starts where on_assign sought, the beginning (taken as 0; a
            # log whose head was deleted by retention reads high until its first message) or the end.
            position = 0 if auto_offset_reset == "earliest" else highwater
        out.append(PartitionLag(topic, partition, position, highwater))
    return out


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._source._on_revoked(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._on_assigned(assigned)


JOIN_POLL_MS = 5_000
"""The longest poll while the consumer holds no partitions (it is joining the group). kafka-python 3.0
runs the JoinGroup round trip as a task that a poll awaits; a task that completes between two polls is
replaced by a new JoinGroup and its assignment dropped, and the broker holds each JoinGroup for its
rebalance delay (3 s on the embedded broker). With the ingest loop's short polls the first assignment
took three joins (9 s); a poll this long sees one complete. A poll returns as soon as records come."""


class KafkaSource(Source):
    def __init__(
        self,
        config: KafkaConfig,
        bootstrap_servers: str,
        stored_offsets: StoredOffsets,
        before_rebalance: Callable[[], None],
        max_poll_records: int = 2000,
    ) -> None:
        """`before_rebalance` must make every batch handed out so far durable (drain the writer)."""
        self._config = config
        self._stored_offsets = stored_offsets
        self._before_rebalance = before_rebalance
        self._paused = False
        self._acked: dict[TopicPartition, int] = {}
        wait_for_any_broker(config, bootstrap_servers)
        try:
            self._consumer = KafkaConsumer(
                **client_options(config, bootstrap_servers),
                group_id=config.group_id,
                enable_auto_commit=False,
                auto_offset_reset=config.auto_offset_reset,
                session_timeout_ms=config.session_timeout_ms,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                max_poll_interval_ms=config.max_poll_interval_ms,
                max_poll_records=max_poll_records,
                fetch_max_bytes=16 * 1024 * 1024,
                max_partition_fetch_bytes=4 * 1024 * 1024,
                # A transactional producer's aborted writes never become events (KIP-98); the default
                # read_uncommitted would store them.
                isolation_level="read_committed",
            )
        except KafkaTimeoutError as exc:
            raise KafkaUnavailableError(
                f"no Kafka broker answered at {bootstrap_servers} within {config.connect_timeout_s:g}s"
            ) from exc
        self._consumer.subscribe([config.topic], listener=_Rebalance(self))

    # -- rebalance ---------------------------------------------------------------------------

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        logger.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))
        self._before_rebalance()
        self._commit_acked()

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._before_rebalance()
        stored = self._stored_offsets()
        fresh = []
        for tp in assigned:
            if tp.partition in stored:
                self._consumer.seek(tp, stored[tp.partition])
            else:
                fresh.append(tp)
        # The buffer is the truth: a partition it has never seen starts from the configured end,
        # whatever the group committed in Kafka (e.g. after restoring an older buffer backup).
        if fresh and self._config.auto_offset_reset == "earliest":
            self._consumer.seek_to_beginning(*fresh)
        elif fresh:
            self._consumer.seek_to_end(*fresh)
        if self._paused and assigned:
            self._consumer.pause(*assigned)
        logger.info(
            "partitions assigned: %s (resuming from buffer offsets %s)",
            sorted(tp.partition for tp in assigned),
            {p: o for p, o in sorted(stored.items()) if any(tp.partition == p for tp in assigned)},
        )

    # -- Source ------------------------------------------------------------------------------

    def next_batch(self, max_records: int, timeout_ms: int) -> Sequence[Sequence[SourceRecord]]:
        if not self._consumer.assignment():  # joining the group: see JOIN_POLL_MS
            timeout_ms = max(timeout_ms, JOIN_POLL_MS)
        try:
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records, update_offsets=True)
        except KafkaError as exc:
            # A broker hiccup is not fatal: kafka-python reconnects; report and let the loop go on.
            logger.warning("Kafka poll failed (%s); will retry", exc)
            return []
        return list(polled.values())

    def pause(self) -> None:
        self._paused = True
        self._consumer.pause(*self._consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        self._consumer.resume(*self._consumer.assignment())

    def resume_at(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Resume, first moving each assigned partition found in `positions` to that offset."""
        for tp in self._consumer.assignment():
            if (tp.topic, tp.partition) in positions:
                self._consumer.seek(tp, positions[(tp.topic, tp.partition)])
        self.resume()

    @property
    def paused(self) -> bool:
        return self._paused

    def acknowledge(self, positions: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), offset in positions.items():
            self._acked[TopicPartition(topic, partition)] = offset
        self._commit_acked()

    def _commit_acked(self) -> None:
        if not self._acked:
            return
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in self._acked.items()}
        self._acked = {}
        try:
            self._consumer.commit_async(offsets=offsets)
        except KafkaError as exc:  # informational only; the buffer holds the real position
            logger.debug("commit of informational offsets failed: %s", exc)

    def lag(self) -> list[PartitionLag]:
        return partition_lags(self.highwaters(), self._stored_offsets(), self._config.auto_offset_reset)

    def highwaters(self) -> dict[tuple[str, int], int | None]:
        """(topic, partition) → the broker's end of it as last fetched, for every assigned partition."""
        return {(tp.topic, tp.partition): self._consumer.highwater(tp) for tp in self._consumer.assignment()}

    def close(self) -> None:
        self._commit_acked()
        self._consumer.close(autocommit=False)
