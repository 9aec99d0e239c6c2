"""Scripted judge endpoints for unit tests of judging (the real judge is tested against vLLM in
tests/test_judge.py)."""

from __future__ import annotations

from collections.abc import Callable


class ScriptedJudgeModel:
    """A judge endpoint whose pairwise pick is `pick(answer_a, answer_b)` ("A", "B" or "tie"), and
    whose score logprobs are `logprobs` (token -> logprob) for every score question."""

    def __init__(
        self,
        pick: Callable[[str, str], str] = lambda a, b: "tie",
        logprobs: Callable[[list[dict[str, str]]], dict[str, float]] | None = None,
    ) -> None:
        self._pick = pick
        self._logprobs = logprobs
        self.asked: list[str] = []

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        self.asked.append("chat")
        return ["A critique without a score line."] * n

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        self.asked.append("choose")
        text = messages[-1]["content"]
        first = text.split("<answer A>\n", 1)[1].split("\n</answer A>", 1)[0]
        second = text.split("<answer B>\n", 1)[1].split("\n</answer B>", 1)[0]
        return self._pick(first, second)

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        self.asked.append("logprobs")
        assert self._logprobs is not None, "this judge was not meant to be asked for logprobs"
        return self._logprobs(messages)


class NoJudgeModel(ScriptedJudgeModel):
    """A judge that must not be asked at all."""

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        raise AssertionError("the judge was asked although no answer needed judging")
