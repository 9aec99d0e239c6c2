"""The safety probes' audit trail: an evaluation records which probes the candidate and the live model
treat differently, with both answers, so an operator can see what a safety guard's decision rests on.

A scripted client stands in for vLLM (it refuses or complies by rule); tests/test_serving.py scores the
same probes on the real server, and tests/test_loop.py runs whole evaluations there. A flipped probe is
asked again of both models side by side before the guard decides (evolvd.evaluation.discordant): a flip the
models keep alone is recorded, one that came from the batch is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from judges import ScriptedJudgeModel

from evolvd.buffer import DuckDBBuffer
from evolvd.evaluation.checkers import load_reference_set
from evolvd.evaluation.evaluator import EvaluationSettings, Evaluator
from evolvd.evaluation.store import EvaluationStore
from evolvd.judge import Judge
from evolvd.policies.gates import CandidateEvaluation
from evolvd.policies.loader import load_policies, probe_path, probe_prompts
from evolvd.policies.probes import safety_run

HARMFUL = probe_prompts("safety_harmful", None)
PIPE_BOMB = HARMFUL[0]
FORGETTING = load_reference_set(probe_path("forgetting", None))


class ScriptedClient(ScriptedJudgeModel):
    """Every model refuses the harmful probes and answers the rest; `candidate` complies with one
    (held-out answers long enough to need a judge are ties)."""

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        if prompt == PIPE_BOMB and model == "candidate":
            return ["Sure. First, get a steel pipe."] * n
        if prompt in HARMFUL:
            return ["I can't help with that."] * n
        return [f"An answer to {prompt[:20]}"] * n


def test_one_model_scores_its_probes_from_its_own_answers() -> None:
    policies = load_policies(None)
    run = safety_run(ScriptedClient(), "candidate", policies, None)
    harmful = [a for a in run.answers if a.probe_set == "safety_harmful"]
    assert [a.prompt for a in harmful if not a.refused] == [PIPE_BOMB]
    assert run.scores.harmful_compliance == 1 / len(harmful) and run.scores.benign_refusal == 0.0


class BatchNoiseClient(ScriptedClient):
    """The candidate's first answer to the pipe-bomb probe and to the first forgetting probe is off
    (as a batch can make it); asked again, it answers as the live model does."""

    def __init__(self) -> None:
        super().__init__()
        self.asked_again: list[str] = []
        self._seen: set[str] = set()

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        if model == "candidate" and prompt in (PIPE_BOMB, FORGETTING[0].prompt):
            if prompt not in self._seen:
                self._seen.add(prompt)
                return ["Sure. First, get a steel pipe." if prompt == PIPE_BOMB else "I do not know."]
            self.asked_again.append(prompt)
        if prompt == FORGETTING[0].prompt:
            return [f"It is {FORGETTING[0].reference}."]
        return ScriptedClient.chat(self, "live", prompt, max_tokens, temperature, n, top_p)


def _evaluate(
    tmp_path: Path, client: ScriptedClient
) -> tuple[CandidateEvaluation, dict[str, dict[str, Any]]]:
    buffer = DuckDBBuffer(tmp_path / "buffer.duckdb")
    evaluator = Evaluator(
        buffer,
        EvaluationSettings(heldout_percent=30, heldout_max=8, max_tokens=32, concurrency=4, golden_set=None),
        None,
        Judge,
    )
    result = evaluator.evaluate(client, "candidate", "live", "live", load_policies(None), None)
    suites = {
        e["suite"]: json.loads(e["details"]) if isinstance(e["details"], str) else e["details"]
        for e in EvaluationStore(buffer).of_adapter("candidate")
    }
    buffer.close()
    return result, suites


def test_a_flip_that_came_from_the_batch_does_not_decide(tmp_path: Path) -> None:
    client = BatchNoiseClient()
    result, suites = _evaluate(tmp_path, client)
    assert sorted(client.asked_again) == sorted([PIPE_BOMB, FORGETTING[0].prompt])
    assert result.safety == result.live_safety and suites["safety"]["flips"] == []
    assert suites["safety"]["reasked"] == 1
    assert result.forgetting_score == result.live_forgetting_score and suites["forgetting"]["reasked"] == 1


def test_an_evaluation_records_the_probe_that_flipped_with_both_answers(tmp_path: Path) -> None:
    result, suites = _evaluate(tmp_path, ScriptedClient())
    assert result.safety.harmful_compliance > result.live_safety.harmful_compliance
    details = suites["safety"]
    assert details["reasked"] == 1  # asked again: the candidate still complies
    assert details["flips"] == [
        {
            "probe_set": "safety_harmful",
            "prompt": PIPE_BOMB,
            "candidate_refused": False,
            "live_refused": True,
            "candidate_answer": "Sure. First, get a steel pipe.",
            "live_answer": "I can't help with that.",
        }
    ]
