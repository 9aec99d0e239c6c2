"""bench/noise_floor.py: its comparison of contexts on made-up outcomes, and its small mode against the
session's real vLLM (the shape of what it reports; 2 probes per set prove nothing, the full benchmark
is `python bench/noise_floor.py`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import run_small_bench

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from noise_floor import compare  # noqa: E402


def test_contexts_are_compared_pair_by_pair() -> None:
    def run(outcomes: list[bool], answers: list[str]) -> dict[str, dict[str, Any]]:
        return {"forgetting": {"outcomes": outcomes, "answers": answers}}

    report = compare(
        {
            "alone": run([True, True, False, True], ["a", "b", "c", "d"]),
            "evaluation": run([True, False, False, True], ["a", "B", "c", "d"]),
            "evaluation_reordered": run([True, True, False, False], ["a", "b", "C", "D"]),
        }
    )["forgetting"]
    assert report["scores"] == {"alone": 0.75, "evaluation": 0.5, "evaluation_reordered": 0.5}
    assert report["max_score_difference"] == 0.25
    assert report["probes_that_flipped"] == [1, 3]  # probe 2's text changed, its outcome did not
    assert report["max_answer_text_changed"] == 0.75  # evaluation vs evaluation_reordered: b, c, d


@pytest.mark.slow
@pytest.mark.vllm
def test_small_mode_reports_every_probe_set(vllm_daemon: Any, tmp_path: Path) -> None:
    result, report = run_small_bench("noise_floor.py", tmp_path / "noise.json", vllm_daemon)
    assert set(report["probe_sets"]) == {"forgetting", "harmful_compliance", "benign_refusal"}
    for name, row in report["probe_sets"].items():
        assert row["n"] == 2 and set(row["scores"]) == {"alone", "evaluation", "evaluation_reordered"}, name
        assert 0.0 <= row["max_score_difference"] <= 1.0 and 0.0 <= row["max_answer_text_changed"] <= 1.0
    assert (result.returncode == 1) == bool(report["misses"])
