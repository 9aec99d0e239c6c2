"""Inference-time self-refinement, the gateway's opt-in mode (SELF at inference): the served answer
is critiqued by the judge, the model writes a refinement from that critique, and the refinement is
sent to the client only when the judge scores it higher than the first answer. Otherwise the client
gets the first answer, unchanged. It costs several model calls per request (`gateway.self_refine`,
measured by bench/refine.py); off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from evolvd.judge import Judge, JudgeModel
from evolvd.labeling.answers import answer_kind
from evolvd.labeling.prompts import refine_prompt
from evolvd.policies.loader import PolicySet

logger = logging.getLogger("evolvd.gateway.refine")


@dataclass(frozen=True)
class Refined:
    text: str
    """What the client gets: the refinement when it scored higher, else the first answer."""
    first_score: float | None
    refined_score: float | None

    @property
    def replaced(self) -> bool:
        return (
            self.first_score is not None
            and self.refined_score is not None
            and self.refined_score > self.first_score
        )


class SelfRefiner:
    def __init__(
        self,
        client: JudgeModel,
        judges: Callable[[JudgeModel, str], Judge],
        policies: Callable[[], PolicySet],
        max_tokens: int,
    ) -> None:
        """`client`: the serving process (the model refines its own answer); `judges`: the judge for a
        served model (itself unless `judge:` names another); `policies`: those in force (the safety
        principles the critique checks, the labeling policy's critique length)."""
        self._client = client
        self._judges = judges
        self._policies = policies
        self._max_tokens = max_tokens

    def refine(self, prompt: str, answer: str, model: str) -> Refined:
        judge = self._judges(self._client, model)
        policies = self._policies()
        principles, length = policies.safety.principles, policies.labeling.critique_max_tokens
        critique, first = judge.critique(prompt, answer, principles, length)
        if first.value is None:
            return Refined(answer, None, None)
        request = refine_prompt(prompt, answer, critique, answer_kind(prompt))
        refined = self._client.chat(model, request, self._max_tokens)[0]
        _, second = judge.critique(prompt, refined, principles, length)
        result = Refined(refined, first.value, second.value)
        return result if result.replaced else Refined(answer, first.value, second.value)
