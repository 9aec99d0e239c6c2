"""The vLLM client never reuses a pooled connection the server may be closing.

A CI run failed a labeling request with "Server disconnected without sending a response": vLLM closes
idle keep-alive connections after 5 s and httpx kept them 5 s as well, so a request could go out on a
connection the server was closing at that instant. These tests pin the two settings that close the window.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evolvd.config import ServingConfig
from evolvd.connectors.vllm_client import CLIENT_KEEPALIVE_S, VLLMClient
from evolvd.serving.supervisor import vllm_environment


class _CountingServer(ThreadingHTTPServer):
    connections = 0

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        self.connections += 1
        super().process_request(request, client_address)


class _ModelsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server does

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[_CountingServer]:
    server = _CountingServer(("127.0.0.1", 0), _ModelsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_connection_idle_past_the_client_keepalive_is_not_reused(
    keep_alive_server: _CountingServer,
) -> None:
    client = VLLMClient(f"http://127.0.0.1:{keep_alive_server.server_address[1]}")
    try:
        assert client.models() == ["m"]
        assert client.models() == ["m"]
        assert keep_alive_server.connections == 1, "back-to-back requests share one pooled connection"
        time.sleep(CLIENT_KEEPALIVE_S + 0.5)
        assert client.models() == ["m"]
        assert keep_alive_server.connections == 2, "an idle connection past the expiry must not be reused"
    finally:
        client.close()


def test_the_supervised_server_keeps_idle_connections_longer_than_the_client(tmp_path: Path) -> None:
    environment = vllm_environment(ServingConfig(), tmp_path, None)
    assert int(environment["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"]) >= 2 * CLIENT_KEEPALIVE_S
