"""The judge: G-Eval expected scores from score-token logprobs, pairwise verdicts both ways round,
and a configured judge endpoint, against the session's real vLLM server."""

from __future__ import annotations

import math
from typing import Any

import pytest
from judges import ScriptedJudgeModel
from pydantic import ValidationError

from evolvd.config import EvolvdConfig, JudgeConfig
from evolvd.judge import Judge, JudgeSource, expected_from_logprobs

PRINCIPLES = ["Answers must be correct."]


def _lp(probabilities: dict[str, float]) -> dict[str, float]:
    return {token: math.log(p) for token, p in probabilities.items()}


def test_the_expected_score_weighs_every_score_token_by_its_probability() -> None:
    assert expected_from_logprobs(_lp({"8": 0.5, "6": 0.25, "x": 0.25}), None) == pytest.approx(
        (8 * 0.5 + 6 * 0.25) / 0.75
    )
    # " 7" and "7" are one score spelt with and without its space.
    assert expected_from_logprobs(_lp({" 7": 0.4, "7": 0.4, "9": 0.2}), None) == pytest.approx(7.4)


def test_a_split_ten_is_told_from_a_one_by_the_next_token() -> None:
    """Digit-splitting tokenizers write 10 as "1" then "0": p(10) = p("1") * p("0" | "1")."""
    first = _lp({"1": 0.6, "9": 0.4})
    after_one = _lp({"0": 0.75, "\n": 0.25})
    expected = (10 * 0.6 * 0.75 + 1 * 0.6 * 0.25 + 9 * 0.4) / 1.0
    assert expected_from_logprobs(first, after_one) == pytest.approx(expected)


def test_no_expected_score_when_the_judge_was_not_about_to_write_one() -> None:
    assert expected_from_logprobs(_lp({"The": 0.7, "8": 0.3}), None) is None
    assert expected_from_logprobs({}, None) is None


def test_the_judge_scores_by_expectation_and_asks_after_a_one() -> None:
    asked: list[str] = []

    def logprobs(messages: list[dict[str, str]]) -> dict[str, float]:
        begun = messages[-1]["content"]
        asked.append(begun)
        return _lp({"0": 0.5, "\n": 0.5}) if begun.endswith("1") else _lp({"1": 0.5, "8": 0.5})

    model = ScriptedJudgeModel(logprobs=logprobs)
    text, score = Judge(model, "j").critique("What is 7 + 5?", "12", PRINCIPLES, 64)
    assert score.status == "expected" and score.value == pytest.approx(10 * 0.25 + 1 * 0.25 + 8 * 0.5)
    assert asked == ["Score: ", "Score: 1"] and text == "A critique without a score line."


def test_without_logprob_scores_the_constrained_digit_is_read() -> None:
    model = ScriptedJudgeModel(pick=lambda a, b: "A")
    model.choose = lambda model, messages, choices: "7"  # type: ignore[method-assign]
    _, score = Judge(model, "j", logprob_scores=False).critique("Q?", "A.", PRINCIPLES, 64)
    assert (score.value, score.status) == (7.0, "constrained")
    assert "logprobs" not in model.asked


def test_a_judge_url_needs_its_model() -> None:
    with pytest.raises(ValidationError, match=r"judge\.url and judge\.model"):
        EvolvdConfig(judge={"url": "http://127.0.0.1:1"})
    assert JudgeConfig().url is None  # default: the served model judges itself


@pytest.fixture(scope="module")
def served(vllm_daemon: Any) -> dict[str, str]:
    serving = vllm_daemon.status()["serving"]
    return {"url": serving["url"], "model": serving["base_model"]["name"], "key": vllm_daemon.vllm_key}


def test_a_configured_judge_endpoint_scores_from_real_logprobs(
    served: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge named in the config (here the session's vLLM under the base model's name, as an
    operator would name a second model) returns G-Eval scores: a real expectation over 1..10."""
    monkeypatch.setenv("EVOLVD_TEST_JUDGE_KEY", served["key"])
    source = JudgeSource(
        JudgeConfig(url=served["url"], model=served["model"], api_key_env="EVOLVD_TEST_JUDGE_KEY")
    )
    try:
        judge = source(ScriptedJudgeModel(), "the-live-model")  # the live model is not asked
        assert judge.model == served["model"]
        text, score = judge.critique(
            "What is the capital of France?", "The capital of France is Paris.", PRINCIPLES, 48
        )
        assert text.strip()
        assert score.status == "expected" and score.value is not None and 1.0 <= score.value <= 10.0
        # Not one sampled digit: the expectation is a mixture of several scores.
        assert score.value != round(score.value)
        verdict = judge.compare("Say hello.", "Hello!", "Goodbye.")
        assert verdict in ("candidate", "live", "tie")
    finally:
        source.close()


def test_a_judge_without_logprobs_falls_back_to_its_score_digit(served: dict[str, str]) -> None:
    """vLLM refuses more top logprobs than its --max-logprobs (20): the judge reads the digit instead."""
    from evolvd.connectors.vllm_client import VLLMClient

    client = VLLMClient(served["url"], timeout_s=120, api_key=served["key"])

    class NoLogprobs:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def next_token_logprobs(
            self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
        ) -> dict[str, float]:
            return client.next_token_logprobs(model, messages, top_logprobs=10_000)

    try:
        _, score = Judge(NoLogprobs(), served["model"]).critique("What is 2 + 2?", "4", PRINCIPLES, 32)
        assert score.status in ("ok", "constrained") and score.value is not None
    finally:
        client.close()
