"""What the gateway captures and passes on (issue 24): a streamed answer whole however the network cuts
its bytes (each chunk used to be parsed alone: a stream cut every 37 bytes was captured as ''), and
a request id from the client (or a new one) to vLLM, the capture record and the access log."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from evolvd.config import GatewayConfig
from evolvd.metrics import ServingMetrics, new_registry
from evolvd.serving.gateway import Gateway
from evolvd.serving.routing import Router
from evolvd.serving.self_refine import SelfRefiner
from evolvd.sse_text import StreamedText

WORDS = ["Hello", " big", " wörld", " 🌍"]


def sse_stream(words: list[str]) -> bytes:
    """What vLLM sends for a streamed chat completion: one `data:` event per delta, then [DONE]."""
    events = [{"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [{"id": "c1", "choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
    body = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
    return body.encode()


def cut(data: bytes, every: int) -> list[bytes]:
    return [data[i : i + every] for i in range(0, len(data), every)]


@pytest.mark.parametrize("every", [1, 2, 7, 37, 10_000])
def test_the_text_is_whole_however_the_bytes_are_cut(every: int) -> None:
    text = StreamedText()
    for chunk in cut(sse_stream(WORDS), every):  # cuts inside lines and inside multi-byte characters
        text.feed(chunk)
    assert text.finish() == "Hello big wörld 🌍"


def test_crlf_lines_no_space_after_the_colon_and_a_last_line_without_newline() -> None:
    text = StreamedText()
    text.feed(b': a comment\r\nevent: message\r\ndata:{"choices": [{"text": "plain "}]}\r\n\r\n')
    text.feed(b'data: {"choices": [{"text": "completion"}]}')  # the stream ends without its newline
    assert text.finish() == "plain completion"


class Captured:
    def __init__(self) -> None:
        self.values: list[dict[str, object]] = []

    def publish(self, value: bytes, key: bytes | None) -> None:
        self.values.append(json.loads(value))


def capturing_gateway(
    upstream: Callable[[httpx.Request], httpx.Response],
    config: GatewayConfig,
    refiner: SelfRefiner | None = None,
    metrics: ServingMetrics | None = None,
) -> tuple[FastAPI, Captured]:
    """The gateway's app in front of a stand-in vLLM (`upstream`), capturing into a list."""
    captured = Captured()
    gateway = Gateway(
        config=config,
        router=Router("base", "evolvd"),
        upstream_url="http://upstream",
        upstream_api_key=None,
        is_ready=lambda: True,
        loaded_adapters=lambda: [],
        metrics=metrics or ServingMetrics.create(new_registry()),
        api_keys=set(),
        capture=captured,
        refiner=refiner,
    )
    gateway._client = httpx.AsyncClient(transport=httpx.MockTransport(upstream), base_url="http://upstream")
    return gateway.app(), captured


def test_the_gateway_captures_a_fragmented_stream_whole_and_relays_it_unchanged() -> None:
    stream = sse_stream(WORDS)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in cut(stream, 37):
            yield chunk

    def upstream(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})

    gateway, captured = capturing_gateway(upstream, GatewayConfig())
    body = {"model": "evolvd", "stream": True, "messages": [{"role": "user", "content": "Greet the world."}]}
    with TestClient(gateway) as client:
        relayed = client.post("/v1/chat/completions", json=body)
    assert relayed.status_code == 200 and relayed.content == stream
    (record,) = captured.values
    assert record["response"] == "Hello big wörld 🌍"
    assert record["messages"] == body["messages"]


def test_a_request_id_goes_to_vllm_back_to_the_client_and_into_the_capture_and_access_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str | None] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-request-id"))
        return httpx.Response(200, json={"id": "c1", "choices": [{"message": {"content": "hi"}}]})

    gateway, captured = capturing_gateway(upstream, GatewayConfig(access_log=True))
    body = {"model": "evolvd", "messages": [{"role": "user", "content": "Hello?"}]}
    with TestClient(gateway) as client, caplog.at_level(logging.INFO, logger="evolvd.gateway.access"):
        given = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "trace-42"})
        made = client.post("/v1/chat/completions", json=body)
        forged = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "a\tb=c d"})
    assert given.headers["x-request-id"] == "trace-42" and seen[0] == "trace-42"
    assert len(made.headers["x-request-id"]) == 32 and seen[1] == made.headers["x-request-id"]
    assert forged.headers["x-request-id"] != "a\tb=c d", "a value that would corrupt log lines is replaced"
    assert [v["metadata"]["request_id"] for v in captured.values] == seen  # type: ignore[index]
    lines = [r.getMessage() for r in caplog.records if r.name == "evolvd.gateway.access"]
    assert len(lines) == 3 and "/v1/chat/completions 200" in lines[0] and "model=base" in lines[0]
    assert lines[0].endswith("request_id=trace-42")
