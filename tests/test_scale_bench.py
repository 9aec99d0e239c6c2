"""bench/scale.py keeps working: its small mode against a private PostgreSQL server, an embedded broker
and the session's vLLM server (the shape of what it reports, and exactly-once in every run; the small
run's rates prove nothing, the full benchmark is `python bench/scale.py`)."""

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


def test_small_mode_measures_both_backends_and_both_member_counts(tmp_path: Path, vllm_daemon: Any) -> None:
    out = tmp_path / "scale.json"
    attach = ["--attach-vllm", vllm_daemon.status()["serving"]["url"]]
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--small", "--out", str(out), *attach],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key},
        capture_output=True,
        text=True,
        timeout=600,
    )
    # A report, and 0 or 1 (a missed target): anything else is a crash of the harness.
    assert result.returncode in (0, 1) and out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["small"] is True
    rates = report["labeled_writes_per_s"]
    assert rates["duckdb"] > 0 and rates["postgres"] > 0
    assert set(report["postgres_writes_per_s_by_writers"]) == {"1", "4"}
    assert report["same_rows_on_both"] is True  # the same results stored the same rows on both backends
    assert report["exactly_once_every_run"] is True
    for run in (report["ingest_1_member"], report["ingest_2_members"]):
        assert run["msgs_per_s"] > 0 and run["exactly_once"] is True
    assert report["raw_consumer_msgs_per_s"] > 0 and report["ingest_2_vs_1_member_ratio"] > 0
    for run in (report["labelers_1"], report["labelers_2"]):  # real labeling on the session's server
        assert run["events_per_s"] > 0 and run["labeled_once"] is True and run["labeled"] == 8
    assert report["labelers_2_vs_1_ratio"] > 0
    assert (result.returncode == 1) == bool(report["failed"])
