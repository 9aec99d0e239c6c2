"""Is another daemon, with a buffer of its own, consuming in this consumer group?

The buffer, not Kafka, holds each partition's position (the informational commits follow it, never
lead it). So a group offset ahead of the buffer's means someone else consumed that partition in
this group into another buffer — a second daemon sharing `kafka.group_id` with its own data_dir
(each then trains on part of the traffic, and messages stored by both are double-counted) — or that
this buffer was restored from an older backup. Either way the operator must know; ingest goes on
from the buffer's own offsets. Real multi-member ingest needs one shared buffer (issue 22)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from evolvd.abc import PartitionAhead
from evolvd.config import KafkaConfig
from evolvd.connectors.kafka_source import client_options

logger = logging.getLogger("evolvd.ingest")


def partitions_ahead(committed: dict[int, int], stored: dict[int, int]) -> list[PartitionAhead]:
    """The partitions whose group offset is past the buffer's (a pure rule, tested alone)."""
    return [
        PartitionAhead(partition, offset, stored.get(partition))
        for partition, offset in sorted(committed.items())
        if offset > stored.get(partition, 0)
    ]


class GroupOffsetsCheck:
    """One admin client, kept between checks (kafka-python starts a network thread per client)."""

    def __init__(
        self, config: KafkaConfig, bootstrap_servers: str, stored_offsets: Callable[[], dict[int, int]]
    ) -> None:
        """`stored_offsets`: the buffer's next offset per partition of `config.topic`."""
        self._config = config
        self._bootstrap = bootstrap_servers
        self._stored_offsets = stored_offsets
        self._admin: KafkaAdminClient | None = None

    def committed(self) -> dict[int, int]:
        if self._admin is None:
            self._admin = KafkaAdminClient(
                **client_options(self._config, self._bootstrap), request_timeout_ms=5000
            )
        group = self._config.group_id
        offsets = self._admin.list_group_offsets(group).get(group, {})
        return {
            tp.partition: meta.offset
            for tp, meta in offsets.items()
            if tp.topic == self._config.topic and meta.offset >= 0
        }

    def check(self) -> list[PartitionAhead] | None:
        """The partitions ahead, or None when the group's offsets could not be read this time."""
        try:
            return partitions_ahead(self.committed(), self._stored_offsets())
        except KafkaError as exc:
            logger.debug("could not read the group's offsets: %s", exc)
            return None

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
