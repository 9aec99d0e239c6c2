"""The judge: the model that critiques, scores and compares answers.

By default the served model judges itself (SELF's self-critique); an operator can name any
OpenAI-compatible endpoint and model instead (`judge:` in the config), typically a larger model.
Critique, refinement re-scoring, critique preference pairs and the pairwise held-out evaluation of
long answers all go through one `Judge`.

Scores are G-Eval's expected score (Liu et al. 2023): after its critique the judge is asked for the
score, and instead of reading the one digit it would sample, the probabilities of every score token
are read from its logprobs and averaged, `sum(p(s) * s)`. A 135M model that writes "Score: 10"
under nearly every answer still puts different mass on 10 against 3 for a right and a wrong
answer; the expectation keeps that difference, the sampled digit loses it. Where the endpoint
returns no logprobs the score line is parsed, then asked for with decoding constrained to 1..10.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from evolvd.config import JudgeConfig
from evolvd.connectors.vllm_client import ChatClient, VLLMClient, VLLMError
from evolvd.judge_prompts import (
    SCORE_CHOICES,
    SCORE_QUESTION,
    Score,
    critique_prompt,
    pairwise_prompt,
    parse_score,
)

logger = logging.getLogger("evolvd.judge")

SCORE_PREFIX = "Score: "
"""The judge's answer to the score question is begun for it, so its next token is the score."""

MIN_SCORE_MASS = 0.5
"""Least total probability on the score tokens for an expected score: below it the judge was not
about to write a score, and its logprobs say nothing about one."""

TOP_LOGPROBS = 20
"""Logprobs asked per position (vLLM's default --max-logprobs is 20)."""

Preference = Literal["first", "second", "tie"]
Verdict = Literal["candidate", "live", "tie"]
PAIRWISE_CHOICES = ["A", "B", "tie"]
_PICK = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


class JudgeModel(ChatClient, Protocol):
    """What judging needs of an endpoint (VLLMClient has it): answers, constrained choices, and the
    logprobs of the next token after a conversation."""

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str: ...

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = TOP_LOGPROBS
    ) -> dict[str, float]: ...


def expected_from_logprobs(first: dict[str, float], after_one: dict[str, float] | None) -> float | None:
    """The expected 1-10 score from the score token's logprobs.

    `first`: token -> logprob at the score's first token; `after_one`: the same for the token after
    a "1" (None when not asked). Tokenizers that split digits write 10 as "1" then "0": p(10) is
    p("1") * p("0" | "1"), and p(1) the rest of p("1"). None when the score tokens hold less than
    MIN_SCORE_MASS of the probability."""
    mass: dict[int, float] = {}
    for token, logprob in first.items():
        word = token.strip()
        if word in SCORE_CHOICES:
            mass[int(word)] = mass.get(int(word), 0.0) + math.exp(logprob)
    if after_one is not None and 1 in mass and 10 not in mass:
        zero = sum(math.exp(lp) for token, lp in after_one.items() if token.strip() == "0")
        mass[10], mass[1] = mass[1] * zero, mass[1] * (1.0 - zero)
    total = sum(mass.values())
    if total < MIN_SCORE_MASS:
        return None
    return sum(score * p for score, p in mass.items()) / total


@dataclass(frozen=True)
class Judge:
    client: JudgeModel
    model: str
    logprob_scores: bool = True
    """Score by the expected value over the score tokens' logprobs (G-Eval); false: read the digit."""

    def critique(
        self,
        prompt: str,
        answer: str,
        principles: Sequence[str],
        max_tokens: int,
        constrained_score: bool = True,
    ) -> tuple[str, Score]:
        """The judge's critique of `answer` to `prompt` and its 1-10 score."""
        request = critique_prompt(prompt, answer, principles)
        text = self.client.chat(self.model, request, max_tokens)[0]
        follow_up = [
            {"role": "user", "content": request},
            {"role": "assistant", "content": text},
            {"role": "user", "content": SCORE_QUESTION},
        ]
        if self.logprob_scores:
            expected = self._expected_score(follow_up)
            if expected is not None:
                return text, Score(round(expected, 3), "expected")
        score = parse_score(text)
        if score.status != "ok" and constrained_score:
            # Small models rarely end with a readable score line. Ask once more with the decoding
            # constrained to 1..10: the model still judges, and the row says the score was constrained.
            picked = self.client.choose(self.model, follow_up, SCORE_CHOICES)
            score = Score(float(picked), "constrained") if picked in SCORE_CHOICES else score
        return text, score

    def _expected_score(self, conversation: list[dict[str, str]]) -> float | None:
        try:
            begun = [*conversation, {"role": "assistant", "content": SCORE_PREFIX}]
            first = self.client.next_token_logprobs(self.model, begun)
            after_one = None
            if any(t.strip() == "1" for t in first) and not any(t.strip() == "10" for t in first):
                one = [*conversation, {"role": "assistant", "content": SCORE_PREFIX + "1"}]
                after_one = self.client.next_token_logprobs(self.model, one)
        except VLLMError as exc:
            if exc.status and 400 <= exc.status < 500:  # the endpoint offers no logprobs: read the digit
                logger.warning(
                    "judge %s returns no logprobs (%s); scores are read from its text", self.model, exc
                )
                return None
            raise
        return expected_from_logprobs(first, after_one)

    def prefer(self, question: str, first: str, second: str) -> Preference:
        """Which of two answers the judge finds better, shown in this order (A = first)."""
        messages = [{"role": "user", "content": pairwise_prompt(question, first, second)}]
        try:
            picked = self.client.choose(self.model, messages, PAIRWISE_CHOICES)
        except VLLMError as exc:
            if not exc.status or exc.status >= 500:
                raise
            # An endpoint without constrained decoding: its free answer's first A, B or tie.
            match = _PICK.search(self.client.chat(self.model, messages[0]["content"], 8)[0])
            picked = match.group(1) if match else "tie"
        return {"A": "first", "B": "second"}.get(picked.strip().upper(), "tie")  # type: ignore[return-value]

    def compare(self, question: str, candidate: str, live: str) -> Verdict:
        """The judge's verdict shown both ways round, which cancels position bias: a side wins when it
        is preferred in one order and not beaten in the other; anything else is a tie."""
        if candidate.strip() == live.strip():
            return "tie"
        as_shown = self.prefer(question, candidate, live)
        swapped = {"first": "second", "second": "first", "tie": "tie"}[self.prefer(question, live, candidate)]
        votes = {as_shown, swapped}
        if votes <= {"first", "tie"} and "first" in votes:
            return "candidate"
        if votes <= {"second", "tie"} and "second" in votes:
            return "live"
        return "tie"


class JudgeSource:
    """The judge to use with a live model: that model itself, or the configured endpoint's model
    (one client for the daemon's lifetime, closed with it)."""

    def __init__(self, config: JudgeConfig) -> None:
        self._config = config
        self._fixed: Judge | None = None
        self._client: VLLMClient | None = None
        if config.url is not None and config.model is not None:
            key = os.environ.get(config.api_key_env) or None
            self._client = VLLMClient(config.url, timeout_s=config.request_timeout_s, api_key=key)
            self._fixed = Judge(self._client, config.model, config.logprob_scores)

    def __call__(self, live: JudgeModel, live_model: str) -> Judge:
        if self._fixed is not None:
            return self._fixed
        return Judge(live, live_model, self._config.logprob_scores)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
