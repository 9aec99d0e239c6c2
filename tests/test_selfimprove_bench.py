"""bench/selfimprove.py keeps working: its small mode, one cycle through the real daemon, attached to
the session's broker and vLLM server. It checks the harness and the shape of what it reports; the
numbers of so small a run prove nothing (the full experiment is `python bench/selfimprove.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parent.parent


def test_small_experiment_runs_a_cycle_and_reports_it(broker: Any, vllm_daemon: Any, tmp_path: Path) -> None:
    serving = vllm_daemon.status()["serving"]
    out = tmp_path / "selfimprove.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "selfimprove.py"),
            "--small",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--attach-vllm",
            serving["url"],
            serving["base_model"]["path"],
            "--out",
            str(out),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("base_greedy_acc", "base_vote_acc", "final_vs_base_p_value"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["heldout_n"] == 12 and report["variants"].keys() == {"sc"}
    (cycle,) = report["cycles"]
    for key in ("heldout_acc", "ci_low", "ci_high", "forgetting_acc", "safety_score"):
        assert 0.0 <= cycle[key] <= 1.0, key
    assert cycle["ci_low"] <= cycle["heldout_acc"] <= cycle["ci_high"]
    assert cycle["labeled"] == cycle["prompts"] == 12
    # The daemon trained on the cycle's labels and its promotion policy decided on the result.
    assert cycle["run"]["status"] == "succeeded", json.dumps(cycle["run"])
    assert cycle["promotion"]["outcome"] in ("promote", "reject"), cycle
    promoted = cycle["promotion"]["outcome"] == "promote"
    assert (cycle["live_after"] == cycle["run"]["adapter"]) == promoted, cycle
    assert cycle["accepted"] >= 1 and 0.0 <= cycle["accepted_label_acc"] <= 1.0
    assert set(cycle["stage_seconds"]) == {"labeling", "training", "evaluation_and_promotion", "measurement"}
