"""Stateless gateways (issue 23): `evolvd run --role gateway` members hold no routing of their own; they
route the public name as the swapping daemon published it to the shared PostgreSQL buffer, so two of
them flip together within one poll, send a canary its share, and write the canary window's outcomes
for the daemon's verdict. Real member processes on a real PostgreSQL; the upstream is a stand-in that
names the model it was asked for (the fleet of real vLLM replicas behind them is tests/test_fleet.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import run_cli, wait_for
from stand_in_http import JsonHandler, StandInServer

from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.config import EvolvdConfig
from evolvd.metrics import GatewayMemberMetrics, ServingMetrics, new_registry
from evolvd.serving.gateway_member import GatewayMember
from evolvd.serving.routing import Router, RoutingNotPublishedError
from evolvd.serving.routing_table import RoutingTable
from evolvd.serving.served_log import ServedLog

pytestmark = [pytest.mark.slow]

POLL_S = 0.1


class StandInUpstream(StandInServer):
    """Answers /health, and each chat completion with the model it was asked for."""

    def __init__(self) -> None:
        self.healthy = True
        upstream = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server names it
                self.answer(200 if upstream.healthy else 503, {})

            def do_POST(self) -> None:  # noqa: N802 - http.server names it
                message = {"role": "assistant", "content": "hi"}
                self.answer(
                    200, {"id": "x", "model": self.body()["model"], "choices": [{"message": message}]}
                )

        super().__init__(Handler)


@pytest.fixture
def upstream() -> Iterator[StandInUpstream]:
    made = StandInUpstream()
    yield made
    made.close()


def member_env(postgres_url: str, upstream: str) -> dict[str, str]:
    return {
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": postgres_url,
        "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": upstream,
        "EVOLVD_GATEWAY__PORT": "0",
        "EVOLVD_GATEWAY__ROUTING_POLL_S": str(POLL_S),
    }


def ask(gateway: str) -> httpx.Response:
    body = {"model": "evolvd", "messages": [{"role": "user", "content": "Say hi."}]}
    return httpx.post(gateway + "/v1/chat/completions", json=body, timeout=10)


def test_two_gateway_members_route_as_published_and_flip_together(
    postgres_url: str, upstream: StandInUpstream, tmp_path: Path
) -> None:
    buffer = PostgresBuffer(postgres_url)
    members = [
        DaemonProcess(tmp_path / f"m{i}", member_env(postgres_url, upstream.url), args=("--role", "gateway"))
        for i in range(2)
    ]
    try:
        for member in members:
            member.start(wait_ready=False)
        for member in members:
            member.wait_ready(timeout_s=60, answering=True)  # up, not ready: nothing is published yet
        urls = [member.data_dir / "gateway.url" for member in members]
        wait_for(lambda: all(url.exists() for url in urls), "the members' gateways", 30, 0.05)
        gateways = [url.read_text().strip() for url in urls]
        # Nothing published yet: the members do not guess a model, they answer 503 and say why.
        early = ask(gateways[0])
        assert early.status_code == 503, early.text
        unready = httpx.get(members[0].url + "/readyz", timeout=5)
        assert unready.status_code == 503 and "no routing published yet" in unready.text

        # The test is the swapping daemon: its router publishes each change before it takes effect.
        router = Router("base-model", "evolvd", publish=RoutingTable(buffer).publish)
        router.update()
        for member in members:
            member.wait_ready(timeout_s=10)

        def serving(expected: str) -> bool:
            return all(ask(g).headers.get("x-evolvd-model") == expected for g in gateways)

        assert serving("base-model")
        for live in ("a1", "a2"):
            flipped = time.monotonic()
            router.update(live=live, previous=router.routing.live)
            wait_for(partial(serving, live), f"both members serving {live}", 5, 0.02)
            assert time.monotonic() - flipped < 2.0  # a poll or two, not a restart of anything
        status = members[1].status()["gateway"]
        assert (status["live"], status["routing_generation"], status["upstream_ok"]) == ("a2", 3, True)

        # A canary with all of the alias traffic: both members send it there, and write each outcome
        # of the window to the buffer, where the daemon's verdict reads them.
        started = time.time()
        router.update(canary="c1", canary_share=1.0)
        wait_for(lambda: serving("c1"), "both members serving the canary", 5, 0.02)
        for gateway in gateways:
            for _ in range(5):
                assert ask(gateway).status_code == 200
        log = ServedLog(buffer)
        wait_for(lambda: len(log.since("c1", started)) >= 12, "the canary's outcomes in the buffer", 5, 0.05)
        assert all(o.ok for o in log.since("c1", started))

        shown = run_cli("status", env=members[0].client_env())
        assert shown.returncode == 0, shown.stderr
        assert "'evolvd' -> a2  canary=c1 (100%)  (routing generation 4" in shown.stdout, shown.stdout

        # The model asked for by name is not the alias's: it is refused, as by the daemon's own gateway.
        refused = httpx.post(
            gateways[0] + "/v1/chat/completions", json={"model": "a1", "messages": []}, timeout=10
        )
        assert refused.status_code == 404

        # Upstream down: requests get 503 at once, readiness says why; back up, served again.
        upstream.healthy = False
        wait_for(lambda: ask(gateways[0]).status_code == 503, "503 while the upstream is down", 10, 0.1)
        upstream.healthy = True
        wait_for(lambda: ask(gateways[0]).status_code == 200, "served again", 10, 0.1)
        for member in members:
            assert member.stop(timeout_s=30) == 0, member.tail()
    finally:
        for member in members:
            member.kill_if_running()
        buffer.close()


def allow_connections(url: str, allowed: bool) -> None:
    """An outage of one database: refused, it also loses the connections it had (and back again)."""
    server, name = url.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres", autocommit=True) as con:
        con.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'.encode())
        if not allowed:
            con.execute(b"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])


def test_a_member_serves_its_last_routing_while_the_buffer_cannot_be_read(
    postgres_url: str, upstream: StandInUpstream, tmp_path: Path
) -> None:
    buffer = PostgresBuffer(postgres_url)
    router = Router("base-model", "evolvd", publish=RoutingTable(buffer).publish)
    router.update(live="a1")
    config = EvolvdConfig.model_validate(
        {
            "data_dir": str(tmp_path),
            "role": "gateway",
            "buffer": {"backend": "postgres", "postgres_url": postgres_url},
            "serving": {"mode": "external", "url": upstream.url},
            "gateway": {"port": 0, "routing_poll_s": POLL_S},
        }
    )
    registry = new_registry()
    member = GatewayMember(
        config, buffer, ServingMetrics.create(registry), GatewayMemberMetrics.create(registry), None
    )
    member.start()
    try:
        gateway = (tmp_path / "gateway.url").read_text().strip()
        assert ask(gateway).headers["x-evolvd-model"] == "a1"

        def read_error() -> str | None:
            return member.status_sections()["gateway"].routing_read_error

        allow_connections(postgres_url, False)
        try:
            wait_for(read_error, "the failed read shown", 10, 0.05)
            answer = ask(gateway)
            assert (answer.status_code, answer.headers["x-evolvd-model"]) == (200, "a1")
            failures = registry.get_sample_value("evolvd_gateway_routing_read_failures_total", {})
            assert (failures or 0) >= 1
        finally:
            allow_connections(postgres_url, True)
        # Back: the member reads again, and follows the next flip (the test's own connection was cut
        # too: its first write fails, as a daemon's swap right after an outage would, and is retried).
        with contextlib.suppress(RoutingNotPublishedError):
            router.update(live="a2")
        if router.routing.live != "a2":
            router.update(live="a2")
        wait_for(lambda: ask(gateway).headers["x-evolvd-model"] == "a2", "the next flip followed", 10, 0.05)
        assert read_error() is None
    finally:
        member.stop()
        buffer.close()
