"""The Kafka log as a part of the daemon: the embedded broker when the config asks for one (started
first, stopped last), and the prompts topic created where the daemon is allowed to create it."""

from __future__ import annotations

from evolvd.config import EvolvdConfig
from evolvd.connectors.embedded_broker import EmbeddedBroker, EmbeddedBrokerError
from evolvd.connectors.kafka_source import KafkaUnavailableError, ensure_topic
from evolvd.status_models import KafkaStatus


class KafkaStartError(RuntimeError):
    """The broker could not be started or reached; the message says why."""


class KafkaLog:
    name = "kafka"

    def __init__(self, config: EvolvdConfig) -> None:
        self._kafka = config.kafka
        emb = self._kafka.embedded
        self._broker = (
            EmbeddedBroker(
                emb.port,
                config.data_dir / "broker.log",
                emb.startup_timeout_s,
                output_to_stderr=config.logging.children == "stderr",
            )
            if self._kafka.is_embedded
            else None
        )
        # The embedded broker's port is chosen when it is built, so every part knows the address.
        self.bootstrap_servers = (
            self._broker.bootstrap_servers if self._broker is not None else self._kafka.bootstrap_servers
        )

    def start(self) -> None:
        if self._broker is not None:
            try:
                self._broker.start()
            except EmbeddedBrokerError as exc:
                raise KafkaStartError(str(exc)) from exc
        if self._kafka.is_embedded or self._kafka.create_topic:
            try:
                ensure_topic(self._kafka, self.bootstrap_servers, self._kafka.embedded.partitions)
            except KafkaUnavailableError as exc:
                raise KafkaStartError(str(exc)) from exc

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()

    def status_sections(self) -> dict[str, KafkaStatus]:
        return {
            self.name: KafkaStatus(
                bootstrap_servers=self.bootstrap_servers,
                embedded=self._kafka.is_embedded,
                topic=self._kafka.topic,
                group_id=self._kafka.group_id,
            )
        }
