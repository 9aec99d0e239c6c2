"""bench/judgement.py: its verdict rules on made-up families, and its small mode against the
session's real vLLM (the shape of what it reports; 4 facts per family prove nothing, the full
benchmark is `python bench/judgement.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from controls import Candidate, gold_delta, training_sets, with_replay  # noqa: E402
from facts import FAMILIES, Fact, draw  # noqa: E402
from judgement import Labeled, family_report, verdicts  # noqa: E402

from evolvd.labeling.answers import majority_vote  # noqa: E402
from evolvd.labeling.pipeline import LabelResult, Sample  # noqa: E402


def test_every_family_draws_real_facts_reproducibly() -> None:
    for family in FAMILIES:
        facts = draw(family, 50)
        assert len(facts) == 50 and len({f.prompt for f in facts}) == 50
        assert facts == draw(family, 50)  # the same questions in every run
    kenya = next(f for f in FAMILIES["capitals"]() if f.prompt == "What is the capital of Kenya?")
    assert kenya.is_right("nairobi") and kenya.is_right("nairobii") and not kenya.is_right("mombasa")
    iron = next(f for f in FAMILIES["atomic_numbers"]() if f.prompt.endswith(" iron?"))
    assert iron.gold == ("26",)


def _items(rights: list[tuple[bool, bool, float, float]]) -> list[Labeled]:
    """(label right, greedy right, confidence, greedy share) per item."""
    fact = Fact("f", "Q?", ("yes",))
    return [
        Labeled(fact, "yes" if greedy else "no", "yes" if label else "no", confidence, share)
        for label, greedy, confidence, share in rights
    ]


def test_a_family_whose_vote_does_not_beat_greedy_must_be_blocked_by_the_gate() -> None:
    same = family_report(_items([(True, True, 1.0, 1.0)] * 30 + [(False, False, 0.8, 0.8)] * 20), 0.6)
    assert not same["vote_beats_greedy"] and same["estimated_label_gain"] == 0.0
    assert verdicts({"same": same}, 0.1) == []  # blocked: as it should be
    assert verdicts({"same": same}, None) == [
        "same: the vote does not beat greedy, yet the training gate's label check passes"
    ]


def test_a_family_whose_vote_beats_greedy_must_have_accurate_calibrated_labels() -> None:
    better = family_report(_items([(True, False, 1.0, 0.0)] * 20 + [(True, True, 1.0, 1.0)] * 10), 0.6)
    assert better["vote_beats_greedy"] and better["confident_label_acc"] == 1.0
    assert better["label_ece"] == 0.0 and verdicts({"better": better}, 0.1) == []
    overconfident = family_report(
        _items([(True, False, 1.0, 0.0)] * 20 + [(False, False, 1.0, 0.0)] * 10), 0.6
    )
    assert overconfident["label_ece"] == pytest.approx(1 / 3, abs=1e-3)
    assert verdicts({"o": overconfident}, 0.1) == ["o: label ECE 0.3333 > 0.1"]


def test_the_controls_train_on_right_wrong_and_self_labels() -> None:
    fact = Fact("small_addition", "What is 2 + 3?", ("5",))
    texts = ["2 + 3 = 5. The answer is 5.", "2 + 3 = 6. The answer is 6.", "It is 5. The answer is 5."]
    answers = ["5", "6", "5"]
    samples = [Sample(t, a) for t, a in zip(texts, answers, strict=True)]
    examples = [("cot", texts[0]), ("direct", "The answer is 5.")]
    result = LabelResult(
        "e1", fact.prompt, "m", "number", {}, samples, majority_vote(answers), examples=examples
    )
    wrong, own, gold = training_sets([(fact, result)], min_confidence=0.6)
    assert gold.examples == [
        (fact.prompt, texts[0]),
        (fact.prompt, texts[2]),
        (fact.prompt, "The answer is 5."),
    ]
    assert wrong.examples == [(fact.prompt, texts[1]), (fact.prompt, "The answer is 6.")]
    assert own.examples == [(fact.prompt, texts[0]), (fact.prompt, "The answer is 5.")]


def test_every_control_gets_the_same_general_replay_rows() -> None:
    wrong, gold = with_replay(
        [Candidate("wrong", [("q", "bad")] * 40), Candidate("gold", [("q", "good")] * 80)]
    )
    assert len(wrong.examples) == 50 and len(gold.examples) == 100  # 20% of each set
    assert wrong.examples[40:] == gold.examples[80:90]  # one replay order for all


def test_the_sign_agreement_rescores_the_daemons_own_items_and_answers_against_gold() -> None:
    gold = {"a": Fact("f", "What is 2 + 3?", ("5",)), "b": Fact("f", "What is 1 + 1?", ("2",))}
    items = [  # the daemon's label for "a" was wrong (6): it scores the right candidate as wrong
        {"event_id": "a", "candidate": False, "live": True, "candidate_answer": "The answer is 5.",
         "live_answer": "The answer is 6."},
        {"event_id": "b", "candidate": True, "live": True, "candidate_answer": "2", "live_answer": "2"},
    ]  # fmt: skip
    daemon_delta, gold_delta_, n = gold_delta({"details": json.dumps({"items": items})}, gold)
    assert (daemon_delta, gold_delta_, n) == (-0.5, 0.5, 2)


@pytest.mark.vllm
def test_small_mode_reports_every_family(small_benches: dict[str, Any]) -> None:
    """The small run of bench/judgement.py, beside the self-improvement ones (conftest.small_benches)."""
    run = small_benches["judgement"]
    # 0, or 1 when the run missed a target: anything else is a crash of the harness.
    assert run.returncode in (0, 1) and run.report is not None, run.output
    report = run.report
    assert set(report["families"]) == {*FAMILIES, "small_addition"}
    for name, family in report["families"].items():
        assert family["n"] == 4, name
        for key in ("greedy_acc", "vote_acc", "label_ece"):
            assert 0.0 <= family[key] <= 1.0, (name, key)
        assert sum(b["count"] for b in family["reliability"]) == 4
    assert (run.returncode == 1) == bool(report["misses"])
