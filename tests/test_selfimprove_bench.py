"""bench/selfimprove.py and bench/freeform.py keep working: their small modes, one cycle through the
real daemon, attached to the session's broker and vLLM server. They check the harness and the shape
of what it reports; the numbers of so small a run prove nothing (the full experiments are
`python bench/selfimprove.py` and `python bench/freeform.py`).

Both harnesses run at once: each mostly waits on the one vLLM server, which batches their requests,
so together they take about as long as the slower one alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import SEED_TASKS

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parent.parent


def start_small(
    script: str, args: list[str], broker: Any, vllm_daemon: Any, out: Path, log: IO[str]
) -> subprocess.Popen[str]:
    """A bench harness's --small mode attached to the session's broker and vLLM, started (its output
    into `log`: a pipe nobody reads while the other harness is awaited would stall it)."""
    serving = vllm_daemon.status()["serving"]
    return subprocess.Popen(
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
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def reports(broker: Any, vllm_daemon: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both harnesses' reports (a harness that crashed: the end of its output instead)."""
    folder = tmp_path_factory.mktemp("selfimprove-bench")
    commands = {
        "selfimprove": ("selfimprove.py", []),
        "freeform": ("freeform.py", ["--source", str(SEED_TASKS)]),
    }
    found: dict[str, Any] = {}
    with ExitStack() as stack:
        logs = {name: stack.enter_context(open(folder / f"{name}.log", "w")) for name in commands}
        runs = {
            name: start_small(script, args, broker, vllm_daemon, folder / f"{name}.json", logs[name])
            for name, (script, args) in commands.items()
        }
        try:
            for name, process in runs.items():
                process.wait(timeout=900)
                report = folder / f"{name}.json"
                failed = process.returncode != 0
                found[name] = (
                    (folder / f"{name}.log").read_text()[-6000:] if failed else json.loads(report.read_text())
                )
        finally:
            for process in runs.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return found


def report_of(reports: dict[str, Any], name: str) -> Any:
    report = reports[name]
    assert isinstance(report, dict), f"bench/{name}.py --small failed:\n{report}"
    return report


def test_small_experiment_runs_a_cycle_and_reports_it(reports: dict[str, Any]) -> None:
    report = report_of(reports, "selfimprove")
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


def test_small_free_form_run_labels_trains_and_judges_open_ended_prompts(reports: dict[str, Any]) -> None:
    report = report_of(reports, "freeform")
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
