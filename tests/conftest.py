"""Shared fixtures: one embedded Kafka-protocol broker per test session, a fresh topic per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from evolvd.connectors.embedded_broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


@pytest.fixture
def topic(broker: Any) -> str:
    """A fresh 2-partition topic (the broker quirks make shared topics and groups flaky)."""
    from evolvd.config import KafkaConfig
    from evolvd.connectors.kafka_source import ensure_topic

    name = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topic(
        KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=name), broker.bootstrap_servers, 2
    )
    return name


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    """Stop the daemons a test started itself if it left them running (e.g. it failed half-way).

    Daemons of module-scoped fixtures were started before this runs, so they are left alone.
    """
    from daemon_process import STARTED

    already = len(STARTED)
    yield
    for daemon in STARTED[already:]:
        daemon.kill_if_running()
    del STARTED[already:]
