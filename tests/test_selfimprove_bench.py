"""bench/selfimprove.py and bench/freeform.py keep working: their small modes, one cycle through the
real daemon, attached to the session's broker and vLLM server. They check the harness and the shape
of what it reports; the numbers of so small a run prove nothing (the full experiments are
`python bench/selfimprove.py` and `python bench/freeform.py`).

Both run at once with the judgement benchmark's small mode (conftest.small_benches)."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]


def report_of(small_benches: dict[str, Any], name: str) -> Any:
    run = small_benches[name]
    assert run.returncode == 0 and run.report is not None, f"bench/{name}.py --small failed:\n{run.output}"
    return run.report


def test_small_experiment_runs_a_cycle_and_reports_it(small_benches: dict[str, Any]) -> None:
    report = report_of(small_benches, "selfimprove")
    for key in ("base_greedy_acc", "base_vote_acc", "final_vs_base_p_value"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["heldout_n"] == 8 and report["variants"].keys() == {"sc"}
    (cycle,) = report["cycles"]
    for key in ("heldout_acc", "ci_low", "ci_high", "forgetting_acc", "safety_score"):
        assert 0.0 <= cycle[key] <= 1.0, key
    assert cycle["ci_low"] <= cycle["heldout_acc"] <= cycle["ci_high"]
    assert cycle["labeled"] == cycle["prompts"] == 8
    # The daemon trained on the cycle's labels and its promotion policy decided on the result.
    assert cycle["run"]["status"] == "succeeded", json.dumps(cycle["run"])
    assert cycle["promotion"]["outcome"] in ("promote", "reject"), cycle
    promoted = cycle["promotion"]["outcome"] == "promote"
    assert (cycle["live_after"] == cycle["run"]["adapter"]) == promoted, cycle
    assert cycle["accepted"] >= 1 and 0.0 <= cycle["accepted_label_acc"] <= 1.0
    assert cycle["run"]["kind"] == "sft" and cycle["dpo_pairs"] == 0  # the sc variant has no DPO stage
    assert set(cycle["stage_seconds"]) == {"labeling", "training", "evaluation_and_promotion", "measurement"}


def test_small_free_form_run_labels_trains_and_judges_open_ended_prompts(
    small_benches: dict[str, Any],
) -> None:
    report = report_of(small_benches, "freeform")
    base, cycle = report["cycles"]
    assert base["cycle"] == "base" and cycle["cycle"] == "1"
    for row in (base, cycle):
        assert row["judge_scored"] >= 1 and 1.0 <= row["judge_score"] <= 10.0, row
        assert 0.0 < row["distinct_2"] <= 1.0 and 0.0 <= row["embedding_spread"] <= 2.0, row
        assert row["mean_words"] > 0 and 0.0 <= row["forgetting_acc"] <= 1.0, row
    # Open-ended prompts went through every stage: semantic votes, self-critiques, a training run.
    assert cycle["labels"] >= 1 and 0.0 < cycle["label_confidence"] <= 1.0, cycle
    assert cycle["label_critiques_scored"] >= 1 and 1.0 <= cycle["label_critique_score"] <= 10.0, cycle
    assert cycle["run"]["status"] == "succeeded" and cycle["examples_trained"] >= 1, cycle
    assert cycle["promotion"]["outcome"] in ("promote", "reject"), cycle
