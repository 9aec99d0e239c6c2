"""The evaluation's greedy-answer memo: the live model is not asked again what it already answered.

A fake client stands in for vLLM here (it only counts and echoes); tests/test_loop.py runs the same
evaluator against the real server.
"""

from __future__ import annotations

import threading
from pathlib import Path

from evolvd.buffer import DuckDBBuffer
from evolvd.evaluation.evaluator import EvaluationSettings, Evaluator
from evolvd.evaluation.greedy_memo import GreedyAnswerMemo
from evolvd.judge import Judge
from evolvd.policies.loader import load_policies


class CountingClient:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int, float, int]] = []
        self._lock = threading.Lock()

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        with self._lock:
            self.asked.append((model, prompt, max_tokens, temperature, n))
        return [f"{model} answers {prompt[:20]} ({i})" for i in range(n)]

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        return "tie"  # the judge of long held-out answers: no preference

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        raise AssertionError("evaluation does not score answers")


def test_only_greedy_single_answers_are_remembered_per_model_prompt_and_budget() -> None:
    client, memo = CountingClient(), GreedyAnswerMemo()
    chat = memo.through(client)
    first = chat.chat("m", "What is 2 + 2?", 16)
    assert chat.chat("m", "What is 2 + 2?", 16) == first and len(client.asked) == 1
    chat.chat("m", "What is 2 + 2?", 32)  # another token budget is another answer
    chat.chat("other", "What is 2 + 2?", 16)  # another model too
    chat.chat("m", "What is 2 + 2?", 16, temperature=0.7)  # samples are never reused
    chat.chat("m", "What is 2 + 2?", 16, temperature=0.7)
    chat.chat("m", "What is 2 + 2?", 16, n=3)
    assert len(client.asked) == 6
    assert (memo.hits, memo.misses) == (1, 3)


def test_the_memo_forgets_the_least_recently_used_answers_first() -> None:
    client, memo = CountingClient(), GreedyAnswerMemo(capacity=2)
    chat = memo.through(client)
    for prompt in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" arrives
        chat.chat("m", prompt, 8)
    chat.chat("m", "a", 8)
    chat.chat("m", "b", 8)
    assert [asked[1] for asked in client.asked] == ["a", "b", "c", "b"]


def test_a_second_evaluation_asks_only_the_new_candidate(tmp_path: Path) -> None:
    policies = load_policies(None)
    evaluator = Evaluator(
        DuckDBBuffer(tmp_path / "buffer.duckdb"),
        EvaluationSettings(heldout_percent=30, heldout_max=8, max_tokens=32, concurrency=4, golden_set=None),
        None,
        Judge,
    )
    client = CountingClient()
    evaluator.evaluate(client, "adapter-v1", "base", "base", policies, None)
    first = {asked[0] for asked in client.asked}
    assert first == {"adapter-v1", "base"}
    per_model = sum(asked[0] == "adapter-v1" for asked in client.asked)

    client.asked.clear()
    evaluation = evaluator.evaluate(client, "adapter-v2", "adapter-v1", "base", policies, None)
    # v1 answered every probe as the candidate, and the base its drift probes: only v2 is asked.
    assert {asked[0] for asked in client.asked} == {"adapter-v2"}
    assert len(client.asked) == per_model
    assert evaluation.live == "adapter-v1" and 0.0 <= evaluation.forgetting_score <= 1.0
