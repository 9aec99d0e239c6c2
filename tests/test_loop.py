"""The whole loop through the real parts: the embedded broker, a daemon attached to the session's vLLM
server, its buffer a database on the session's PostgreSQL server (buffer.backend postgres, the shared
buffer of issue 22), real labeling, real TRL training (tiny), real evaluation, promotion and canary.

One loop daemon for the module; the tests run in file order, each a step of its life:
promote → a trainer is killed and retried, and a gate rejects its candidate → a canary regresses and
is rolled back → the daemon is killed during a promotion and restarted (and leads its loop again).
Policies are steered the way an operator does it: by editing the files in its policy directory while
it runs. The same loop on the embedded DuckDB buffer (the default) runs in the small self-improvement
and chaos benchmarks of the suite (tests/test_selfimprove_bench.py, tests/test_chaos.py: label, train,
evaluate, promote; the daemon killed at random, one live adapter after every restart); the tables'
owners run on both backends in the unit tests (conftest.either_buffer).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import produce, run_cli, wait_for
from loop_harness import PROMOTE_STRAIGHT, LoopHarness, start_loop_daemon

from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.connectors.vllm_client import bearer_header

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def harness(
    broker: Any, vllm_daemon: DaemonProcess, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoopHarness]:
    root = tmp_path_factory.mktemp("loop")
    url = postgres.new_database()
    shared = {"EVOLVD_BUFFER__BACKEND": "postgres", "EVOLVD_BUFFER__POSTGRES_URL": url}
    harness = start_loop_daemon(broker, vllm_daemon, root, lambda _: PostgresBuffer(url), shared)
    yield harness
    assert harness.daemon.stop(timeout_s=120) == 0, harness.daemon.tail()


def test_prompts_are_labeled_trained_evaluated_and_promoted(harness: LoopHarness) -> None:
    daemon = harness.daemon
    status = daemon.status()
    base = status["serving"]["base_model"]["name"]
    assert harness.live() == base
    assert status["buffer"]["path"].startswith("postgresql://")
    assert status["loop"]["leadership"]["role"] == "leader"  # the only member of its shared buffer
    sent = harness.produce_prompts(train=8, heldout=4)

    live = wait_for(
        lambda: harness.live() != base and harness.live(), "a trained adapter to go live", 600, 1.0, daemon
    )
    served, _ = harness.ask()
    assert served == live  # the gateway serves the new adapter under the public name

    run = next(r for r in harness.runs() if r["adapter_name"] == live)
    assert (run["status"], run["kind"]) == ("succeeded", "sft")
    loop = daemon.status()["loop"]
    summary = next(e for e in loop["evaluations"] if e["adapter_name"] == live)
    assert summary["baseline_name"] == base
    decision = next(d for d in loop["promotion_decisions"] if d["adapter"] == live)
    assert decision["outcome"] == "promote"
    jobs = {j["job"]: j for j in loop["jobs"]}
    for job in ("labeling", "policies", "training", "evaluation", "promotion"):
        assert jobs[job]["last"]["outcome"] in ("ok", "idle"), jobs[job]

    # The live answer's lineage, back to the Kafka offsets it learned from (never the held-out ones).
    lineage = harness.admin("GET", f"/adapters/{live}")["adapter"]
    assert lineage["manifest"]["run_id"] == run["run_id"]
    offsets = lineage["kafka_offsets"]
    assert offsets and {o["topic"] for o in offsets} == {harness.topic}
    assert sum(o["events"] for o in offsets) <= 8
    shown = run_cli("adapters", "show", live, env=daemon.client_env())
    assert shown.returncode == 0, shown.stderr
    assert f"kafka {harness.topic}[" in shown.stdout and "promotion decision: promote" in shown.stdout

    # Every row lives in the shared database, the decision with its term's fencing token; no DuckDB file.
    with psycopg.connect(harness.env["EVOLVD_BUFFER__POSTGRES_URL"]) as con:
        events = {r[0] for r in con.execute(b"SELECT id FROM events").fetchall()}
        token = con.execute(
            b"SELECT fencing_token FROM policy_decisions WHERE policy = 'promotion' AND subject_id = %s",
            [live],
        ).fetchone()
    assert set(sent) <= events and token is not None and token[0] >= 1
    assert not list(daemon.data_dir.glob("*.duckdb"))


def test_a_killed_trainer_is_retried_and_a_failing_gate_rejects_its_candidate_while_serving_continues(
    harness: LoopHarness,
) -> None:
    daemon = harness.daemon
    live = harness.live()
    harness.edit_policy("promotion", PROMOTE_STRAIGHT.replace("min_heldout: 1", "min_heldout: 1000"))
    errors: list[str] = []
    answered = 0
    stop = threading.Event()

    def steady_client() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                harness.ask("Say hi.")
                answered += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            stop.wait(2.0)

    client = threading.Thread(target=steady_client)
    client.start()
    try:
        harness.produce_prompts(train=8)
        active = wait_for(
            lambda: daemon.status()["loop"]["training_now"], "a trainer child to start", 600, 1.0, daemon
        )
        os.kill(active["pid"], signal.SIGKILL)  # the trainer child of the daemon under test

        def retried() -> dict[str, Any] | None:
            dataset = active["run_id"].rsplit("-", 1)[0]  # run-<data set>-<attempt>
            runs = [r for r in harness.runs() if r["run_id"].rsplit("-", 1)[0] == dataset]
            # Succeeded and registered: the run row names its adapter once the registry took it.
            done = [r for r in runs if r["status"] == "succeeded" and r["adapter_name"]]
            return done[0] if done else None

        succeeded = wait_for(retried, "the retried run to succeed", 300, 1.0, daemon)
        failed = next(r for r in harness.runs() if r["run_id"] == active["run_id"])
        assert failed["status"] == "failed"
        assert "trainer killed by SIGKILL" in failed["reason"]
        assert succeeded["attempt"] == failed["attempt"] + 1

        # The retried run's adapter is a candidate like any other: the promotion gate judges it.
        rejected = succeeded["adapter_name"]
        wait_for(
            lambda: any(a["name"] == rejected and a["status"] == "rejected" for a in harness.adapters()),
            "the retried candidate to be rejected",
            600,
            1.0,
            daemon,
        )
    finally:
        stop.set()
        client.join(timeout=150)
    assert not errors, errors[:3]
    assert answered > 0
    row = next(a for a in harness.adapters() if a["name"] == rejected)
    assert "promotion.min_heldout" in row["reason"] and "need 1000" in row["reason"]
    assert harness.live() == live
    assert harness.ask()[0] == live
    vllm = httpx.get(
        daemon.status()["serving"]["url"] + "/v1/models", headers=bearer_header(daemon.vllm_key), timeout=30
    ).json()
    assert rejected not in {m["id"] for m in vllm["data"]}  # the rejected candidate was unloaded


def test_a_regressing_canary_is_rolled_back_automatically(harness: LoopHarness) -> None:
    from evolvd.contract import encode_message

    daemon = harness.daemon
    live = harness.live()
    # The next candidate becomes a canary: a long window, and rollback on user feedback only
    # (latency on a 2-core CPU is too noisy to be the signal under test).
    harness.edit_policy(
        "promotion",
        PROMOTE_STRAIGHT.replace(
            "canary: null",
            """canary:
  share: 0.5
  window_s: 3600
  min_requests: 1
rollback:
  max_error_rate_increase: 0.5
  max_latency_ratio: 100
  max_feedback_drop: 0.2
""",
        ),
    )
    harness.produce_prompts(train=8)
    canary = wait_for(
        lambda: harness.adapter_with_status("canary", set()),
        "the candidate to start its canary",
        600,
        1.0,
        daemon,
    )
    with ThreadPoolExecutor(8) as pool:  # concurrent users: vLLM batches them
        served = list(pool.map(harness.ask, [f"What is {i} + 2?" for i in range(16)]))
    assert {model for model, _ in served} == {live, canary}
    # Users dislike the canary's answers and like the live adapter's: feedback events on the
    # captured answers (the gateway publishes each as message `gw-<response id>`).
    feedback = [
        encode_message(f"gw-{response_id}", None, feedback="down" if model == canary else "up")
        for model, response_id in served
    ]
    # A producer forges the opposite: 150 answers it says the canary served, each liked. The gateway
    # never sealed them (evolvd.capture_seal), so the canary's window must not count them; counted,
    # they would outvote the users' "down" (a feedback drop under 0.2) and the canary would stay.
    forged = [
        encode_message(f"forged-{i}", "Say hello.", metadata={"served_by": canary}, feedback="up")
        for i in range(150)
    ]
    produce(harness.broker, harness.topic, feedback + forged)

    def rolled_back() -> dict[str, Any] | None:
        canaries = daemon.status()["loop"]["canaries"]
        return next((c for c in canaries if c["adapter_name"] == canary and c["outcome"]), None)

    ended = wait_for(rolled_back, "the canary to be judged", 300, 1.0, daemon)
    assert ended["outcome"] == "rolled_back", ended
    assert "promotion.rollback.max_feedback_drop" in ended["reason"]
    row = next(a for a in harness.adapters() if a["name"] == canary)
    assert row["status"] == "rolled_back"
    decision = next(d for d in daemon.status()["loop"]["promotion_decisions"] if d["adapter"] == canary)
    assert decision["outcome"] == "rollback"
    assert {harness.ask()[0] for _ in range(6)} == {live}
    metrics = httpx.get(daemon.url + "/metrics", headers=daemon.auth).text
    assert 'evolvd_promotion_decisions_total{outcome="rollback"} 1.0' in metrics


def test_daemon_killed_during_promotion_restarts_with_exactly_one_live_adapter(harness: LoopHarness) -> None:
    daemon = harness.daemon
    known = {a["name"] for a in harness.adapters()}
    harness.edit_policy("promotion", PROMOTE_STRAIGHT)
    harness.admin("POST", "/jobs/promotion/pause")
    harness.produce_prompts(train=8, heldout=2)  # held-out items of its own: promotion.min_heldout is 1

    def evaluated() -> str | None:
        candidate = harness.adapter_with_status("evaluating", known)
        if candidate is None:
            return None
        summaries = daemon.status()["loop"]["evaluations"]
        return candidate if any(e["adapter_name"] == candidate for e in summaries) else None

    candidate = wait_for(evaluated, "a new candidate to be evaluated", 600, 1.0, daemon)
    harness.admin("POST", "/jobs/training/pause")  # no further candidates: the end state is known
    assert harness.admin("POST", "/jobs/promotion/run")["started"]
    time.sleep(0.3)  # at or just after the promotion: the candidate is loaded, so its swap is only a flip
    daemon.kill()

    restarted = DaemonProcess(daemon.data_dir, harness.env).start(timeout_s=180)
    harness.daemon = restarted
    harness.admin("POST", "/jobs/promotion/resume")  # the paused state survived the restart
    wait_for(lambda: harness.live() == candidate, "the candidate to be live", 300, 1.0, restarted)
    live_rows = [a["name"] for a in harness.adapters() if a["status"] == "live"]
    assert live_rows == [candidate]  # the buffer: exactly one live adapter
    assert harness.ask()[0] == candidate  # the gateway agrees
    jobs = {j["job"]: j for j in restarted.status()["loop"]["jobs"]}
    assert jobs["training"]["paused"] is True
    assert restarted.stop(timeout_s=120) == 0, restarted.tail()
