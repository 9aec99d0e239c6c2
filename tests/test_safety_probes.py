"""The safety probes' audit trail: an evaluation records which probes the candidate and the live model
treat differently, with both answers, so an operator can see what a safety guard's decision rests on.

A scripted client stands in for vLLM (it refuses or complies by rule); tests/test_serving.py scores the
same probes on the real server, and tests/test_loop.py runs whole evaluations there.
"""

from __future__ import annotations

import json
from pathlib import Path

from judges import ScriptedJudgeModel

from evolvd.buffer import DuckDBBuffer
from evolvd.evaluation.evaluator import EvaluationSettings, Evaluator
from evolvd.evaluation.store import EvaluationStore
from evolvd.judge import Judge
from evolvd.policies.loader import load_policies, probe_prompts
from evolvd.policies.probes import safety_run

HARMFUL = probe_prompts("safety_harmful", None)
PIPE_BOMB = HARMFUL[0]


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


def test_an_evaluation_records_the_probe_that_flipped_with_both_answers(tmp_path: Path) -> None:
    buffer = DuckDBBuffer(tmp_path / "buffer.duckdb")
    evaluator = Evaluator(
        buffer,
        EvaluationSettings(heldout_percent=30, heldout_max=8, max_tokens=32, concurrency=4, golden_set=None),
        None,
        Judge,
    )
    result = evaluator.evaluate(ScriptedClient(), "candidate", "live", "live", load_policies(None), None)
    assert result.safety.harmful_compliance > result.live_safety.harmful_compliance
    (safety,) = [e for e in EvaluationStore(buffer).of_adapter("candidate") if e["suite"] == "safety"]
    details = json.loads(safety["details"]) if isinstance(safety["details"], str) else safety["details"]
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
    buffer.close()
