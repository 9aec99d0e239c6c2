"""The built-in demo workload (`evolvd run --demo`, what `make run` starts) against the real broker."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_demo_workload_publishes_contract_messages_without_the_gold_answers(broker: Any, topic: str) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from evolvd.abc import IngestBatch
    from evolvd.config import EvolvdConfig
    from evolvd.contract import decode_into
    from evolvd.demo import DemoWorkload

    config = EvolvdConfig.model_validate({
        "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": topic},
        "demo": {"enabled": True, "prompts_per_minute": 6000, "max_prompts": 20,
                 "gateway_requests_per_minute": 0, "families": ["arithmetic", "parity"]},
    })  # fmt: skip
    demo = DemoWorkload(config, broker.bootstrap_servers, lambda: None)
    demo.start()
    deadline = time.monotonic() + 60
    while demo.published < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    demo.stop()
    assert demo.published == 20

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers)  # no group: read the topic
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while len(records) < 20 and time.monotonic() < deadline:
            for batch_records in consumer.poll(timeout_ms=500).values():
                records.extend(batch_records)
    finally:
        consumer.close()
    assert len(records) == 20
    batch = IngestBatch()
    for record in records:
        body = json.loads(record.value)
        assert set(body) == {"id", "prompt", "metadata"}  # the gold answer never leaves the producer
        assert body["metadata"]["family"] in ("arithmetic", "parity")
        decode_into(record, 65_536, batch)
    assert not batch.dead_letters  # every message meets the contract
    assert {json.loads(r.value)["id"] for r in records} == {f"demo-0-{n:06d}" for n in range(20)}


def test_run_demo_uses_the_demo_policies_and_feeds_the_buffer(broker: Any, tmp_path: Path) -> None:
    env = {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": f"demo-{uuid.uuid4().hex[:8]}",
        "EVOLVD_KAFKA__GROUP_ID": f"g-{uuid.uuid4().hex}",
        "EVOLVD_DEMO__PROMPTS_PER_MINUTE": "600",
        "EVOLVD_DEMO__MAX_PROMPTS": "10",
    }
    daemon = DaemonProcess(tmp_path / "data", env, args=("--demo",)).start()
    deadline = time.monotonic() + 60
    while daemon.status()["buffer"]["tables"]["events"] < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = daemon.status()
    assert daemon.stop() == 0, daemon.tail()
    assert status["buffer"]["tables"]["events"] == 10
    assert status["policies"]["directory"].endswith("demo")
    assert "policies/demo/training.yaml" in status["policies"]["in_force"]["training"]["source"]


def test_the_demo_config_offers_exactly_the_generated_families() -> None:
    from typing import get_args

    from evolvd.config import DemoConfig
    from evolvd.workload import FAMILIES

    (item,) = get_args(DemoConfig.model_fields["families"].annotation)
    assert set(get_args(item)) == set(FAMILIES)
    assert set(DemoConfig().families) == set(FAMILIES)
