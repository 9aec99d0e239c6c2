"""bench/selfimprove.py and bench/freeform.py keep working: their small modes, one cycle through the
real daemon, attached to the session's broker and vLLM server. They check the harness and the shape
of what it reports; the numbers of so small a run prove nothing (the full experiments are
`python bench/selfimprove.py` and `python bench/freeform.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SEED_TASKS

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parent.parent


def run_small(script: str, args: list[str], broker: Any, vllm_daemon: Any, tmp_path: Path) -> Any:
    """Run a bench harness's --small mode attached to the session's broker and vLLM; its report."""
    serving = vllm_daemon.status()["serving"]
    out = tmp_path / "result.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / script),
            "--small",
            *args,
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--attach-vllm",
            serving["url"],
            serving["base_model"]["path"],
            "--out",
            str(out),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_small_experiment_runs_a_cycle_and_reports_it(broker: Any, vllm_daemon: Any, tmp_path: Path) -> None:
    report = run_small("selfimprove.py", [], broker, vllm_daemon, tmp_path)
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
    broker: Any, vllm_daemon: Any, tmp_path: Path
) -> None:
    report = run_small("freeform.py", ["--source", str(SEED_TASKS)], broker, vllm_daemon, tmp_path)
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
