"""The chaos soak's small mode (bench/chaos.py --small): hostile traffic through the real broker, a
real daemon running its whole loop, attached to the session's vLLM server, while the daemon, its Kafka
fetcher, the vLLM server and a trainer are each killed once with SIGKILL. Nothing may be lost,
duplicated or stalled; the full soak (20,000 messages, 12 kills) is `python bench/chaos.py`."""

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


def test_small_chaos_soak_loses_duplicates_and_stalls_nothing(
    broker: Any, vllm_daemon: Any, tmp_path: Path
) -> None:
    serving = vllm_daemon.status()["serving"]
    out = tmp_path / "chaos.json"
    command = [
        sys.executable, str(ROOT / "bench" / "chaos.py"), "--small",
        "--bootstrap-servers", broker.bootstrap_servers,
        "--attach-vllm", serving["url"], serving["base_model"]["path"],
        "--vllm-pid", str(serving["pid"]),  # the session's server: its daemon restarts it
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert result.returncode == 0, report.get("failed") or result.stderr[-3000:]
    assert report["failed"] == []
    assert report["hostile"] > 0 and report["dead_letters"] == report["hostile"]
    assert report["events_stored"] == report["messages"] - report["hostile"]
    assert (report["lost"], report["duplicates"], report["ingest_stalls"]) == (0, 0, 0)
    assert report["live_adapters"] <= 1 and report["live_matches_registry"] and report["gateway_answered"]
    # Each kind of process was really killed (a trainer only if labeling got one started in time).
    assert {"daemon", "fetcher", "vllm"} <= set(report["kills"]), report["timeline"]
    assert set(report["kills"]) | set(report["kills_skipped"]) == {"daemon", "fetcher", "vllm", "trainer"}
