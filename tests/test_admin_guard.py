"""The admin API's front door, on a real uvicorn server on loopback: what a web page the operator opens,
a rebound DNS name, a wrong token or a huge body can and cannot do (issue 20, the auth surface)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import run_cli
from prometheus_client import CollectorRegistry

from evolvd.admin import create_app
from evolvd.admin_client import admin_call
from evolvd.admin_guard import MAX_BODY_BYTES
from evolvd.http_server import HttpServer
from evolvd.serving.hotswap import SwapError, SwapResult
from evolvd.serving.registry import AdapterRow, AdapterStatus
from evolvd.serving.service import manual_promote_reason
from evolvd.status_models import DaemonStatus, Lineage

TOKEN = "s3cret-token"


@dataclass
class StubServing:
    """Records what the API asked of serving (the real swap needs vLLM: tests/test_serving.py)."""

    promoted: list[tuple[str, bool]] = field(default_factory=list)
    registry: Any = None

    def register(self, path: Path, evaluate: bool = False) -> str:
        return "a-v1"

    def promote(self, name: str, force: bool = False) -> SwapResult:
        self.promoted.append((name, force))
        return SwapResult("promote", None, name, 1.0)

    def start_canary(self, name: str, share: float | None) -> SwapResult:
        return SwapResult("canary", None, name, 1.0)

    def stop_canary(self) -> SwapResult:
        return SwapResult("canary", "a-v1", None, 0.0)

    def rollback(self) -> SwapResult:
        return SwapResult("rollback", "a-v1", None, 1.0)

    def vllm_metrics(self) -> str:
        return ""


RECORDED_STATUS = Path(__file__).parent / "data" / "status_answer.json"
"""A /status answer recorded from `evolvd run --demo` after its first promotion decision (paths made
neutral): a run, an evaluation, a decision, the drift note and the training gate."""


@dataclass
class StubDaemon:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    serving: StubServing = field(default_factory=StubServing)
    scheduler: Any = None
    policies: Any = None

    def lineage(self, adapter: str) -> Lineage | None:
        return None

    def no_scheduler_reason(self) -> str:
        return "this daemon runs no loop (it is a `ingest` member)"

    def status(self) -> DaemonStatus:
        return DaemonStatus.model_validate_json(RECORDED_STATUS.read_text())

    def readiness(self) -> tuple[bool, str]:
        return True, "ok"


@pytest.fixture
def api() -> Iterator[tuple[HttpServer, StubDaemon, str]]:
    daemon = StubDaemon()
    server = HttpServer(
        create_app(daemon, TOKEN, loopback=True), "127.0.0.1", 0, "evolvd-admin", limit_concurrency=8
    )
    server.start()
    try:
        yield server, daemon, TOKEN
    finally:
        server.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_cross_site_post_cannot_promote_or_roll_back(
    api: tuple[HttpServer, StubDaemon, str],
) -> None:
    server, daemon, token = api
    # What a page on another site can send without a CORS preflight: text/plain, a form, or no body.
    for headers, content in [
        ({"Content-Type": "text/plain"}, b"{}"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"force=true"),
        ({}, None),
    ]:
        response = httpx.post(
            server.url + "/adapters/bad-v9/promote", headers={**auth(token), **headers}, content=content
        )
        assert response.status_code == 415, response.text
        assert "Content-Type: application/json" in response.json()["detail"]
    # JSON from a foreign Origin (after a preflight the API never answers, or a misconfigured proxy).
    foreign = httpx.post(
        server.url + "/rollback", headers={**auth(token), "Origin": "https://evil.example"}, json={}
    )
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    assert daemon.serving.promoted == []
    # The operator's own CLI call goes through, same-origin Origin included.
    own = httpx.post(
        server.url + "/adapters/a-v1/promote",
        headers={**auth(token), "Origin": server.url},
        json={"force": True},
    )
    assert own.status_code == 200, own.text
    assert admin_call(server.url, "POST", "/adapters/a-v2/promote", token=token).status_code == 200
    assert daemon.serving.promoted == [("a-v1", True), ("a-v2", False)]


def test_a_rebound_dns_name_cannot_read_status(api: tuple[HttpServer, StubDaemon, str]) -> None:
    server, _, token = api
    rebound = httpx.get(
        server.url + "/status", headers={**auth(token), "Host": f"attacker.example:{server.port}"}
    )
    assert rebound.status_code == 421 and "DNS rebinding" in rebound.json()["detail"]
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "127.0.0.1"):
        assert httpx.get(server.url + "/status", headers={**auth(token), "Host": host}).status_code == 200


def test_the_token_is_checked_before_the_body_and_bodies_are_bounded() -> None:
    daemon = StubDaemon()
    server = HttpServer(create_app(daemon, TOKEN, loopback=True), "127.0.0.1", 0, "evolvd-admin")
    server.start()
    try:
        # A wrong token with a body over the limit: refused from the headers, the body never read.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(
                b"POST /policies/dry-run HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n"
                b"Content-Type: application/json\r\nContent-Length: 300000000\r\n\r\n{"
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 401")
        big = {"files": {"safety.yaml": "x" * (MAX_BODY_BYTES + 1)}}
        too_big = httpx.post(server.url + "/policies/dry-run", headers=auth(TOKEN), json=big)
        assert too_big.status_code == 413
        chunked = httpx.post(
            server.url + "/rollback",
            headers={**auth(TOKEN), "Content-Type": "application/json"},
            content=iter([b"{", b"}"]),  # a generator body goes out chunked
        )
        assert chunked.status_code == 411
        # The schema is behind the token; the probes are not.
        assert httpx.get(server.url + "/openapi.json").status_code == 401
        assert (
            httpx.get(server.url + "/openapi.json", headers=auth(TOKEN)).json()["info"]["title"]
            == "evolvd admin"
        )
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert httpx.get(server.url + "/status").status_code == 401
    finally:
        server.stop()


def test_clients_that_send_their_headers_slowly_are_cut_off_and_cannot_lock_the_operator_out() -> None:
    server = HttpServer(
        create_app(StubDaemon(), TOKEN, loopback=True),
        "127.0.0.1",
        0,
        "evolvd-admin",
        limit_concurrency=2,
        header_timeout_s=1.0,
    )
    server.start()
    try:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        for raw in slow:
            raw.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then, a byte now and then
        time.sleep(0.2)
        assert httpx.get(server.url + "/status", headers=auth(TOKEN)).status_code == 503, "all slots held"
        started = time.monotonic()
        for raw in slow:
            raw.sendall(b"X")
            assert raw.recv(4096) == b"", "the connection is closed at the deadline, trickle or not"
        assert time.monotonic() - started < 5
        assert httpx.get(server.url + "/status", headers=auth(TOKEN)).status_code == 200
        # A kept-alive connection gets the same deadline for its next request's head (sooner than
        # uvicorn's 5 s keep-alive timeout, which the first byte of a request cancels).
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # one small answer
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            assert kept.recv(4096) == b""
            assert time.monotonic() - started < 3
        for raw in slow:
            raw.close()
    finally:
        server.stop()


def test_there_is_no_admin_api_without_a_token() -> None:
    with pytest.raises(ValueError, match="always has a token"):
        create_app(StubDaemon(), "", loopback=True)


def adapter(status: str, reason: str | None) -> AdapterRow:
    return AdapterRow("m-v3-abc", 3, Path("/adapters/m-v3"), AdapterStatus(status), "m-v2", reason, {})


def test_promoting_a_rejected_adapter_needs_force_and_says_so_in_the_swap_log() -> None:
    assert (
        manual_promote_reason("m-v3-abc", adapter("candidate", None), False) == "manual promote (admin API)"
    )
    assert manual_promote_reason("nope", None, False) == "manual promote (admin API)"
    for status in ("rejected", "rolled_back"):
        with pytest.raises(SwapError, match=rf"m-v3-abc was {status} \(held-out p = 0.4\).*--force"):
            manual_promote_reason("m-v3-abc", adapter(status, "held-out p = 0.4"), False)
        forced = manual_promote_reason("m-v3-abc", adapter(status, "held-out p = 0.4"), True)
        assert (
            forced == f"FORCED manual promote of a {status} adapter (admin API), overriding: held-out p = 0.4"
        )


def test_serving_that_is_still_preparing_its_model_answers_503_with_why(tmp_path: Path) -> None:
    """A real ServingService before `start()` has built its parts (a first start converts the bundled
    model for minutes while Prometheus already scrapes /serving/metrics): a clear 503, never a 500."""
    from evolvd.buffer import DuckDBBuffer
    from evolvd.config import EvolvdConfig
    from evolvd.metrics import ServingMetrics
    from evolvd.serving.service import ServingNotStartedError, ServingService

    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    registry = CollectorRegistry()
    serving = ServingService(
        EvolvdConfig(data_dir=tmp_path), buffer, ServingMetrics.create(registry), "127.0.0.1:9"
    )
    with pytest.raises(ServingNotStartedError, match="not started yet"):
        serving.serving_name()
    assert serving.status_sections()["serving"].state == "not started" and serving.live_model() is None
    daemon = StubDaemon(registry=registry, serving=serving)  # type: ignore[arg-type]
    server = HttpServer(create_app(daemon, TOKEN, loopback=True), "127.0.0.1", 0, "evolvd-admin")
    server.start()
    try:
        for method, path in (
            ("GET", "/serving/metrics"),
            ("POST", "/adapters/a-v1/promote"),
            ("POST", "/rollback"),
        ):
            response = admin_call(server.url, method, path, token=TOKEN)
            assert response.status_code == 503, (path, response.text)
            assert "not started yet" in response.json()["detail"]
    finally:
        server.stop()
        buffer.close()


def test_the_cli_reads_the_status_answer_as_the_model_the_api_declares(
    api: tuple[HttpServer, StubDaemon, str],
) -> None:
    """One definition on both sides: the API's OpenAPI schema names the models, `evolvd status` renders
    the recorded answer from them, and --json gives back the same document."""
    server, daemon, token = api
    schema = httpx.get(server.url + "/openapi.json", headers=auth(token)).json()
    answers = {
        (path, method): op["responses"]["200"]["content"]["application/json"]["schema"].get("$ref", "")
        for path, methods in schema["paths"].items()
        for method, op in methods.items()
    }
    assert answers[("/status", "get")].endswith("/DaemonStatus")
    assert answers[("/adapters", "get")].endswith("/AdapterList")
    assert answers[("/rollback", "post")].endswith("/SwapOutcome")
    assert answers[("/jobs", "get")].endswith("/JobList")
    env = {**os.environ, "EVOLVD_ADMIN_TOKEN": token, "EVOLVD_ADMIN_URL": server.url}
    recorded = daemon.status()
    shown = run_cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert recorded.loop is not None and recorded.loop.promotion_decisions
    decision = recorded.loop.promotion_decisions[0]
    assert f"promotion {decision.adapter}: {decision.outcome}" in shown.stdout
    assert f"dead letters {recorded.dead_letters.total}" in shown.stdout
    as_json = run_cli("status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    assert DaemonStatus.model_validate_json(as_json.stdout) == recorded


def test_an_answer_of_another_shape_is_a_clear_cli_error(tmp_path: Path) -> None:
    """A daemon of another version (here: a loopback server answering a different document) is named as
    such, with the fields that differ, not a KeyError."""

    class OtherShape(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"version": "0.0.1", "state": "running"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OtherShape)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {
            **os.environ,
            "EVOLVD_ADMIN_TOKEN": "t",
            "EVOLVD_ADMIN_URL": url,
            "EVOLVD_DATA_DIR": str(tmp_path),
        }
        shown = run_cli("status", env=env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert shown.returncode == 1
    assert "GET /status is not what this evolvd expects" in shown.stderr and "buffer" in shown.stderr
