"""bench/metaskill.py's pure parts: which examples each adapter trains on, which sampled answers
make a right/wrong pair, and how a critic's two scores count. The full benchmark (labeling, two
trainings, three critics on a real vLLM) is `python bench/metaskill.py`; `--small` checks its harness."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from facts import Fact  # noqa: E402
from metaskill import agreement, answer_pair, ranked_right, task_and_judging_sets  # noqa: E402

from evolvd.labeling.answers import majority_vote  # noqa: E402
from evolvd.labeling.pipeline import LabelResult, Sample  # noqa: E402

SUM = Fact("small_addition", "What is 3 + 4?", ("7",))


def _result(answers: list[str], judged: list[tuple[str, str]]) -> LabelResult:
    samples = [Sample(f"The answer is {a}.", a) for a in answers]
    result = LabelResult("e", SUM.prompt, "m", "number", {}, samples, majority_vote(answers))
    result.examples = [("cot", samples[0].text), ("direct", "The answer is 7.")]
    result.judge_examples = judged
    return result


def test_only_confident_labels_give_examples_and_their_critiques_go_with_them() -> None:
    confident = _result(["7", "7", "7", "8", "7"], [("Review the answer ...", "Fine.\nScore: 9")])
    unsure = _result(["7", "8", "9", "6", "5"], [("Review the answer ...", "Fine.\nScore: 8")])
    task, judging = task_and_judging_sets([confident, unsure], min_confidence=0.6)
    assert task == [(SUM.prompt, "The answer is 7."), (SUM.prompt, "The answer is 7.")]
    assert judging == [("Review the answer ...", "Fine.\nScore: 9")]


def test_a_pair_needs_a_right_and_a_readable_wrong_answer() -> None:
    pair = answer_pair(SUM, ["No idea.", "The answer is 8.", "3 + 4 = 7. The answer is 7."])
    assert pair is not None and (pair.right, pair.wrong) == (
        "3 + 4 = 7. The answer is 7.",
        "The answer is 8.",
    )
    assert answer_pair(SUM, ["The answer is 7.", "No idea."]) is None  # nothing wrong to rank below
    assert answer_pair(SUM, ["The answer is 8.", "The answer is 9."]) is None


def test_a_critic_is_credited_only_for_ranking_the_right_answer_higher() -> None:
    assert [
        ranked_right(9.1, 8.0),
        ranked_right(8.0, 9.1),
        ranked_right(9.0, 9.0),
        ranked_right(None, 3.0),
    ] == [
        1.0,
        0.0,
        0.5,
        0.5,
    ]
    assert agreement([1.0, 0.0, 0.5, 0.5]) == 0.5 and agreement([]) == 0.0
