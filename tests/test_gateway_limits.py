"""What the gateway refuses before anything reaches vLLM (issue 20, the gateway): model names it does
not serve to clients, oversized requests, and canary statistics from traffic the alias did not
route. The upstream is httpx's mock transport (the real one is tests/test_serving.py's vLLM)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from evolvd.config import GatewayConfig
from evolvd.metrics import ServingMetrics, new_registry
from evolvd.serving.gateway import Gateway
from evolvd.serving.routing import Router
from evolvd.serving.served_stats import MAX_MODELS, ServedStats

LIVE, CANARY, CANDIDATE = "base-v2-aaaa", "base-v3-bbbb", "base-v4-cccc"


@pytest.fixture
def gateway() -> tuple[TestClient, list[dict[str, Any]], ServedStats]:
    router = Router("base", "evolvd")
    router.update(live=LIVE, canary=CANARY, canary_share=0.5)
    stats = ServedStats()
    upstream_bodies: list[dict[str, Any]] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        upstream_bodies.append(body)
        return httpx.Response(200, json={"id": "x", "model": body["model"], "choices": [{"text": "ok"}]})

    app = Gateway(
        config=GatewayConfig(extra_models=["base"], max_tokens=64, max_n=2, max_body_bytes=2048),
        router=router,
        upstream_url="http://upstream",
        upstream_api_key=None,
        is_ready=lambda: True,
        loaded_adapters=lambda: [LIVE, CANARY, CANDIDATE],
        metrics=ServingMetrics.create(new_registry()),
        api_keys=set(),
        served_stats=stats,
    )
    app._client = httpx.AsyncClient(transport=httpx.MockTransport(upstream), base_url="http://upstream")
    return TestClient(app.app()), upstream_bodies, stats


def test_only_the_public_name_and_the_allow_list_are_served(
    gateway: tuple[TestClient, list[dict[str, Any]], ServedStats],
) -> None:
    client, sent, _ = gateway
    models = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["evolvd", "base"], "candidates under evaluation must not be listed"
    assert all(isinstance(m["created"], int) and m["object"] == "model" for m in models)
    for name in (CANDIDATE, CANARY, LIVE, "anything"):
        refused = client.post("/v1/completions", json={"model": name, "prompt": "hi"})
        assert refused.status_code == 404, name
        assert refused.json()["error"] == {
            "message": f"The model `{name}` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }, "OpenAI's error shape: code a string or null, and the param at fault"
    assert sent == []
    assert client.post("/v1/completions", json={"model": "base", "prompt": "hi"}).status_code == 200
    assert client.post("/v1/completions", json={"model": "evolvd", "prompt": "hi"}).status_code == 200
    assert sent[0]["model"] == "base" and sent[1]["model"] in (LIVE, CANARY)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 65),
        ("max_completion_tokens", 10_000),
        ("n", 3),
        ("best_of", 50),
        ("n", "2"),
        ("n", True),
    ],
)
def test_requests_over_the_caps_are_refused(
    gateway: tuple[TestClient, list[dict[str, Any]], ServedStats], field: str, value: object
) -> None:
    client, sent, _ = gateway
    refused = client.post("/v1/completions", json={"model": "evolvd", "prompt": "hi", field: value})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert f"`{field}` must be an integer of at most" in error["message"] and error["param"] == field
    assert sent == []


def test_an_oversized_body_is_refused_declared_or_streamed(
    gateway: tuple[TestClient, list[dict[str, Any]], ServedStats],
) -> None:
    client, sent, _ = gateway
    big = json.dumps({"model": "evolvd", "prompt": "x" * 4000}).encode()
    assert client.post("/v1/completions", content=big).status_code == 413
    chunked = client.post("/v1/completions", content=iter([big[:1000], big[1000:]]))
    assert chunked.status_code == 413
    assert sent == []


def test_only_alias_routed_traffic_counts_in_a_canary_window(
    gateway: tuple[TestClient, list[dict[str, Any]], ServedStats],
) -> None:
    client, _, stats = gateway
    for _ in range(50):  # a client naming a model itself says nothing about the alias's routing
        client.post("/v1/completions", json={"model": "base", "prompt": "hi"})
    assert stats.since("base", 0.0).requests == 0
    for _ in range(20):
        client.post("/v1/completions", json={"prompt": "hi"})  # no model: the alias
    routed = stats.since(LIVE, 0.0).requests + stats.since(CANARY, 0.0).requests
    assert routed == 20


def test_per_model_statistics_stay_bounded_as_adapters_come_and_go() -> None:
    stats = ServedStats()
    for version in range(3 * MAX_MODELS):  # one new adapter name per promotion, for a long time
        stats.record(f"adapter-v{version}", True, 0.1)
    stats.record("adapter-v20", True, 0.1)  # still serving: kept
    stats.record("adapter-late", True, 0.1)
    assert len(stats.models) == MAX_MODELS
    assert {"adapter-v20", "adapter-late", "adapter-v23"} <= stats.models
    assert "adapter-v0" not in stats.models and "adapter-v16" not in stats.models
    assert stats.since("adapter-v20", 0).requests == 2


def test_vllms_other_routes_are_served_for_the_public_name(
    gateway: tuple[TestClient, list[dict[str, Any]], ServedStats],
) -> None:
    client, sent, _ = gateway
    for route, body in (
        ("/tokenize", {"model": "evolvd", "prompt": "Hello"}),
        ("/detokenize", {"model": "evolvd", "tokens": [1, 2]}),
        ("/v1/responses", {"model": "evolvd", "input": "Hello"}),
    ):
        assert client.post(route, json=body).status_code == 200, route
    assert len(sent) == 3 and all(b["model"] in (LIVE, CANARY) for b in sent), "the alias, resolved"
    refused = client.post("/v1/responses", json={"model": CANDIDATE, "input": "Hello"})
    assert refused.status_code == 404, "the same names are served as on the other routes"
    capped = client.post("/v1/responses", json={"model": "evolvd", "input": "Hi", "max_output_tokens": 65})
    assert capped.status_code == 400 and capped.json()["error"]["param"] == "max_output_tokens"
    assert client.get("/health").status_code == 200
    assert client.get("/version").json()["version"]
