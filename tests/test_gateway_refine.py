"""gateway.self_refine: the answer is critiqued and refined before the client sees it, and replaced
only when the judge scores the refinement higher (a scripted judge in front of a stand-in vLLM), and
the refine step against the session's real vLLM."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_gateway_capture import Captured, capturing_gateway

from evolvd.config import GatewayConfig, JudgeConfig
from evolvd.judge import Judge, JudgeSource
from evolvd.metrics import ServingMetrics, new_registry
from evolvd.policies.loader import load_policies
from evolvd.serving.self_refine import SelfRefiner

FIRST = "Paris, I think, or maybe Lyon."
REFINED = "The capital of France is Paris."
POLICIES = load_policies(None)


class ScriptedModel:
    """Refines to REFINED; the judge's score logprobs put all mass on `scores[answer]`."""

    def __init__(self, scores: dict[str, str], fail: bool = False) -> None:
        self.scores, self.fail = scores, fail

    def chat(self, model: str, prompt: str, max_tokens: int, temperature: float = 0.0, n: int = 1,
             top_p: float = 1.0) -> list[str]:  # fmt: skip
        if self.fail:
            raise RuntimeError("the serving process went away")
        return [REFINED] if prompt.startswith("Question:") else ["A critique."]

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        raise AssertionError("scores come from logprobs here")

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        judged = messages[0]["content"].split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
        return {self.scores[judged]: math.log(1.0)}


def refining_gateway(model: ScriptedModel) -> tuple[TestClient, Captured, ServingMetrics]:
    def upstream(request: httpx.Request) -> httpx.Response:
        body = {"id": "c1", "object": "chat.completion", "model": "base",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": FIRST}}]}  # fmt: skip
        return httpx.Response(200, json=body)

    refiner = SelfRefiner(model, Judge, lambda: POLICIES, 64)
    metrics = ServingMetrics.create(new_registry())
    app, captured = capturing_gateway(upstream, GatewayConfig(self_refine=True), refiner, metrics)
    return TestClient(app), captured, metrics


def counted(metrics: ServingMetrics, outcome: str) -> float:
    value: float = metrics.gateway_refinements.labels(outcome)._value.get()
    return value


def ask(client: TestClient) -> Any:
    """The client's response to one chat request to the public name."""
    body = {"model": "evolvd", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    return client.post("/v1/chat/completions", json=body)


def test_a_refinement_the_judge_scores_higher_replaces_the_answer_everywhere() -> None:
    client, captured, metrics = refining_gateway(ScriptedModel({FIRST: "4", REFINED: "9"}))
    response = ask(client)
    assert response.status_code == 200 and response.headers["x-evolvd-refined"] == "true"
    assert response.json()["choices"][0]["message"]["content"] == REFINED
    (record,) = captured.values
    assert record["response"] == REFINED  # the loop learns from what the client got
    assert counted(metrics, "replaced") == 1


def test_a_refinement_scored_no_higher_leaves_the_first_answer() -> None:
    client, _, metrics = refining_gateway(ScriptedModel({FIRST: "7", REFINED: "7"}))
    response = ask(client)
    assert response.headers["x-evolvd-refined"] == "false"
    assert response.json()["choices"][0]["message"]["content"] == FIRST
    assert counted(metrics, "kept") == 1


def test_a_failed_refinement_still_answers_with_the_first_answer() -> None:
    client, _, metrics = refining_gateway(ScriptedModel({}, fail=True))
    response = ask(client)
    assert response.status_code == 200 and "x-evolvd-refined" not in response.headers
    assert response.json()["choices"][0]["message"]["content"] == FIRST
    assert counted(metrics, "failed") == 1


@pytest.mark.vllm
def test_the_refine_step_runs_on_the_real_model(vllm_daemon: Any) -> None:
    from evolvd.connectors.vllm_client import VLLMClient

    serving = vllm_daemon.status()["serving"]
    client = VLLMClient(serving["url"], timeout_s=300, api_key=vllm_daemon.vllm_key)
    try:
        refiner = SelfRefiner(client, JudgeSource(JudgeConfig()), lambda: POLICIES, 48)
        refined = refiner.refine("What is the capital of France?", "Lyon.", serving["base_model"]["name"])
        assert refined.first_score is not None and 1.0 <= refined.first_score <= 10.0
        assert refined.refined_score is not None and 1.0 <= refined.refined_score <= 10.0
        assert refined.text == "Lyon." or refined.replaced  # replaced only when scored higher
    finally:
        client.close()
