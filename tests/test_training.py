"""Real training runs (TRL + PEFT in a child process, tiny): a run succeeds and leaves an adapter
that passes the serving checks with its manifest; a killed child and a timed-out child each end
as a failed run with the reason, and the next attempt succeeds."""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from evolvd.adapter_folder import ADAPTER_MANIFEST, ADAPTER_WEIGHTS, check_adapter
from evolvd.buffer import DuckDBBuffer
from evolvd.connectors.model_bootstrap import BaseModel
from evolvd.metrics import TrainingMetrics, new_registry
from evolvd.precision import resolve, resolve_device
from evolvd.training.launchers import LocalTrainer
from evolvd.training.runner import MlflowTarget, TrainingRunner, progress_messages
from evolvd.training.snapshot import freeze_snapshot
from evolvd.training.spec import Hyperparameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from pictures import plot_loss

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO / "var" / "test-cache" / "models"
TINY = Hyperparameters(max_steps=3, batch_size=2, max_length=96, dpo_steps=2)


@pytest.fixture(scope="module")
def base_model() -> BaseModel:
    from evolvd.connectors.model_bootstrap import ensure_bundled_model

    return ensure_bundled_model(MODEL_CACHE)


def _buffer_with_examples(path: Path) -> DuckDBBuffer:
    buffer = DuckDBBuffer(path)
    con = buffer.cursor()
    for i in range(24):
        con.execute(
            "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash)"
            " VALUES (?, 't', 0, ?, ?, ?)",
            [f"ev{i}", i, f"What is {i} + 2?", f"h{i}"],
        )
        con.execute(
            "INSERT INTO training_examples (event_id, format, prompt, completion, confidence, model_version,"
            " labeler_version, safety_outcome) VALUES (?, 'direct', ?, ?, 1.0, 'm', 'l', 'allow')",
            [f"ev{i}", f"What is {i} + 2?", f"The answer is {i + 2}."],
        )
        con.execute(
            "INSERT INTO preference_pairs (event_id, prompt, chosen, rejected, margin, model_version,"
            " labeler_version) VALUES (?, ?, ?, 'I cannot say.', 4, 'm', 'l')",
            [f"ev{i}", f"What is {i} + 2?", f"The answer is {i + 2}."],
        )
    return buffer


# MLflow's SQL store (read back below) uses a SQLAlchemy loader strategy that SQLAlchemy 2.1 deprecates.
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_a_run_trains_an_adapter_and_a_killed_or_hung_child_fails_with_its_reason(
    tmp_path: Path, base_model: BaseModel
) -> None:
    buffer = _buffer_with_examples(tmp_path / "b.duckdb")
    snapshot = freeze_snapshot(buffer.cursor(), tmp_path / "datasets", 0.6, 0.0, heldout_percent=10)
    assert snapshot is not None and snapshot.n_pairs > 0
    registry = new_registry()
    metrics = TrainingMetrics.create(registry)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a real MLflow tracking store (SQLite)
    runner = TrainingRunner(
        buffer,
        tmp_path / "runs",
        base_model.path,
        base_model.content_hash,
        metrics,
        600,
        mlflow=MlflowTarget(tracking, "evolvd-test"),
    )
    stop = threading.Event()

    # 1. Killed mid-run (as the OOM killer would): failed, with the reason, nothing half-written served.
    killer = threading.Thread(target=_kill_when_training, args=(runner,), daemon=True)
    killer.start()
    killed = runner.run(snapshot, TINY, 1, None, stop, use_pairs=False)
    killer.join()
    assert not killed.succeeded and "killed by SIGKILL" in (killed.reason or "")
    row = (
        buffer.cursor()
        .execute("SELECT status, reason FROM runs WHERE run_id = ?", [killed.run_id])
        .fetchone()
    )
    assert row == ("failed", killed.reason)

    # 2. A child past training.timeout_s: killed and failed with that reason.
    hung = TrainingRunner(buffer, tmp_path / "runs", base_model.path, base_model.content_hash, metrics, 3)
    timed_out = hung.run(snapshot, TINY, 2, None, stop, use_pairs=False)
    assert not timed_out.succeeded and "timed out after 3 s" in (timed_out.reason or "")

    # 3. The next attempt: SFT then DPO, an adapter the serving checks accept, with its manifest.
    ok = runner.run(snapshot, TINY, 3, None, stop, use_pairs=True)
    assert ok.succeeded, ok.reason
    assert ok.adapter_path is not None
    info = check_adapter(ok.adapter_path, base_model.path, max_rank=16)
    assert info.rank == TINY.lora_r
    manifest = json.loads((ok.adapter_path / ADAPTER_MANIFEST).read_text())
    assert (
        manifest["dataset_id"] == snapshot.dataset_id
        and manifest["base_model_sha256"] == base_model.content_hash
    )
    assert (
        manifest["metrics"]["sft_steps"] == TINY.max_steps
        and manifest["metrics"]["dpo_steps"] == TINY.dpo_steps
    )
    assert manifest["metrics"]["dtype"] == resolve("auto")  # bfloat16 only where this machine has it
    assert manifest["metrics"]["device"] == resolve_device("auto")  # the CPU here: no GPU is visible
    assert sorted(p.name for p in ok.adapter_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        ADAPTER_MANIFEST,
    ]
    runs = buffer.cursor().execute("SELECT attempt, status, kind FROM runs ORDER BY attempt").fetchall()
    assert runs == [(1, "failed", "sft"), (2, "failed", "sft"), (3, "succeeded", "sft+dpo")]
    assert registry.get_sample_value("evolvd_training_runs_total", {"outcome": "failed"}) == 2
    steps = registry.get_sample_value("evolvd_training_steps_total", {"phase": "sft"})
    assert steps is not None and steps >= TINY.max_steps
    # Each phase's loss went to TensorBoard, in the run's folder, where `adapters show` points.
    row = buffer.cursor().execute("SELECT config FROM runs WHERE run_id = ?", [ok.run_id]).fetchone()
    assert row is not None
    config = json.loads(row[0])
    for phase, phase_steps in (("sft", TINY.max_steps), ("dpo", TINY.dpo_steps)):
        events = EventAccumulator(str(Path(config["tensorboard"]) / phase))
        events.Reload()
        losses = events.Scalars("train/loss")
        assert [e.step for e in losses] == list(range(1, phase_steps + 1)), phase
        assert all(math.isfinite(e.value) for e in losses)
    # The README's loss picture (bench/pictures.py) is drawn from those same files.
    picture = tmp_path / "loss.png"
    drawn = plot_loss(Path(config["tensorboard"]).parent, picture)
    assert [step for step, _ in drawn] == list(range(1, TINY.max_steps + 1))
    assert picture.read_bytes().startswith(b"\x89PNG")
    # ... and to MLflow, one run per phase named after the evolvd run, where `adapters show` points.
    assert config["mlflow"] == {
        "tracking_uri": tracking,
        "experiment": "evolvd-test",
        "runs": [f"{ok.run_id}-sft", f"{ok.run_id}-dpo"],
    }
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("evolvd-test")
    assert experiment is not None
    by_name = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    for phase, phase_steps in (("sft", TINY.max_steps), ("dpo", TINY.dpo_steps)):
        history = client.get_metric_history(by_name[f"{ok.run_id}-{phase}"].info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, phase_steps + 1)), phase
        assert all(math.isfinite(m.value) for m in history)
    buffer.close()


def test_torchrun_trains_one_adapter_whose_weights_are_identical_on_both_ranks(
    tmp_path: Path, base_model: BaseModel
) -> None:
    """training.launcher torchrun: two data-parallel ranks (gloo between the CPU processes) under the
    daemon's runner; the run is recorded once, the adapter is rank 0's, and both ranks report the same
    LoRA weights, which are the saved ones."""
    from safetensors.torch import load_file

    from evolvd.training.child import lora_digest

    buffer = _buffer_with_examples(tmp_path / "b.duckdb")
    snapshot = freeze_snapshot(buffer.cursor(), tmp_path / "datasets", 0.6, 0.0, heldout_percent=10)
    assert snapshot is not None
    runner = TrainingRunner(
        buffer, tmp_path / "runs", base_model.path, base_model.content_hash, None, 600, processes=2
    )
    hp = Hyperparameters(max_steps=2, batch_size=2, max_length=96, dpo_steps=0, torch_threads=1)
    outcome = runner.run(snapshot, hp, 1, None, threading.Event(), use_pairs=False)
    log = (tmp_path / "runs" / outcome.run_id / "trainer.log").read_text()[-3000:]
    assert outcome.succeeded, f"{outcome.reason}\n{log}"
    assert outcome.adapter_path is not None
    digests = outcome.metrics["rank_lora_sha256"]
    assert outcome.metrics["ranks"] == 2 and len(digests) == 2 and digests[0] == digests[1]
    assert lora_digest(load_file(str(outcome.adapter_path / ADAPTER_WEIGHTS))) == digests[0]
    check_adapter(outcome.adapter_path, base_model.path, max_rank=16)
    rows = buffer.cursor().execute("SELECT status FROM runs").fetchall()
    assert rows == [("succeeded",)]
    buffer.close()


def test_a_run_submitted_to_a_ray_cluster_is_watched_stopped_and_failed_like_a_local_one(
    tmp_path: Path, base_model: BaseModel
) -> None:
    """training.launcher ray against a real single-node Ray cluster (tests/ray_cluster.py: its own
    network namespace, the job API bridged to loopback). A run submitted as a Ray job trains the same
    adapter files (the job's log carries the child's progress protocol back); a run stopped by the
    daemon stops its job on the cluster; a cluster that cannot be reached fails the attempt with the
    reason, and the training job would retry it."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray_cluster import RayCluster, namespaces_available

    if (why := namespaces_available()) is not None:
        pytest.skip(f"a loopback-only Ray cluster needs a network namespace: {why}")
    from evolvd.training.launchers import RayLauncher

    buffer = _buffer_with_examples(tmp_path / "b.duckdb")
    snapshot = freeze_snapshot(buffer.cursor(), tmp_path / "datasets", 0.6, 0.0, heldout_percent=10)
    assert snapshot is not None
    hp = Hyperparameters(max_steps=2, batch_size=2, max_length=96, dpo_steps=0)
    (tmp_path / "cluster").mkdir()
    cluster = RayCluster(tmp_path / "cluster").start()
    try:
        launcher = RayLauncher(cluster.address, sys.executable, processes=1, num_cpus=1, gpus=0)
        runner = TrainingRunner(
            buffer, tmp_path / "runs", base_model.path, base_model.content_hash, None, 600, launcher=launcher
        )
        seen: list[dict[str, object]] = []
        watcher = threading.Thread(target=lambda: seen.append(_active_when_training(runner)), daemon=True)
        watcher.start()
        outcome = runner.run(snapshot, hp, 1, None, threading.Event(), use_pairs=False)
        log = (tmp_path / "runs" / outcome.run_id / "trainer.log").read_text()[-3000:]
        assert outcome.succeeded, f"{outcome.reason}\n{log}"
        assert outcome.adapter_path is not None and outcome.metrics["sft_steps"] == 2
        check_adapter(outcome.adapter_path, base_model.path, max_rank=16)
        watcher.join(timeout=10)
        (active,) = seen
        assert active["pid"] is None and str(active["job_id"]).startswith(f"evolvd-{outcome.run_id}-")
        jobs = JobSubmissionClient(cluster.address)
        assert jobs.get_job_status(str(active["job_id"])) == JobStatus.SUCCEEDED

        stop = threading.Event()

        def stop_once_submitted() -> None:
            _active_when_training(runner)
            stop.set()  # as the daemon's shutdown does

        threading.Thread(target=stop_once_submitted, daemon=True).start()
        stopped = runner.run(snapshot, hp, 2, None, stop, use_pairs=False)
        assert not stopped.succeeded and stopped.reason is not None and "daemon stopping" in stopped.reason
        (second,) = [j for j in jobs.list_jobs() if (j.metadata or {}).get("evolvd_run") == stopped.run_id]
        assert second.status == JobStatus.STOPPED
    finally:
        cluster.stop()

    unreachable = RayLauncher(cluster.address, sys.executable, processes=1, num_cpus=1, gpus=0)
    runner = TrainingRunner(
        buffer, tmp_path / "runs", base_model.path, base_model.content_hash, None, 600, launcher=unreachable
    )
    failed = runner.run(snapshot, hp, 3, None, threading.Event(), use_pairs=False)
    assert not failed.succeeded and failed.reason is not None
    assert failed.reason.startswith("could not start the trainer:") and cluster.address in failed.reason
    rows = buffer.cursor().execute("SELECT status FROM runs ORDER BY attempt").fetchall()
    assert rows == [("succeeded",), ("failed",), ("failed",)]
    buffer.close()


def _active_when_training(runner: TrainingRunner) -> dict[str, object]:
    """What the status page shows of the run in flight, once there is one (bounded wait)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (active := runner.active()) is not None:
            return active
        time.sleep(0.1)
    raise AssertionError("no run became active within 120 s")


def _kill_when_training(runner: TrainingRunner) -> None:
    """SIGKILL the child once it has loaded the model (bounded wait)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        child = runner.current
        if child is not None:
            assert isinstance(child, LocalTrainer)
            time.sleep(4)  # inside model loading or the first steps
            child.kill()
            return
        time.sleep(0.1)


_PARENT = """
import sys, threading, time
from pathlib import Path
from evolvd.buffer import DuckDBBuffer
from evolvd.metrics import TrainingMetrics, new_registry
from evolvd.training.launchers import LocalTrainer
from evolvd.training.runner import MlflowTarget, TrainingRunner
from evolvd.training.snapshot import freeze_snapshot
from evolvd.training.spec import Hyperparameters

root, model_path, model_hash = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
buffer = DuckDBBuffer(root / "b.duckdb")
snapshot = freeze_snapshot(buffer.cursor(), root / "datasets", 0.6, 0.0, heldout_percent=10)
metrics = TrainingMetrics.create(new_registry())
runner = TrainingRunner(buffer, root / "runs", model_path, model_hash, metrics, 600)

def report() -> None:
    while runner.current is None:
        time.sleep(0.05)
    print(runner.current.pid, flush=True)

threading.Thread(target=report, daemon=True).start()
hyper = Hyperparameters(max_steps=200, batch_size=2, max_length=96)
runner.run(snapshot, hyper, 1, None, threading.Event(), use_pairs=False)
"""


def test_a_daemon_killed_with_9_takes_its_trainer_with_it(tmp_path: Path, base_model: BaseModel) -> None:
    """The trainer runs in its own session (so a kill takes its helpers), which left it training
    on, orphaned, after kill -9 of the daemon until it next wrote to its dead stdout pipe (a restarted
    daemon started a second run beside it); the lifeline ends it with its parent."""
    import os
    import signal
    import subprocess
    import sys

    _buffer_with_examples(tmp_path / "b.duckdb").close()
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path), str(base_model.path), base_model.content_hash],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        time.sleep(3)  # the child is importing torch or loading the model by now
        assert _alive(child_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        # At once (SIGTERM from the kernel), not at its next progress line into the dead pipe.
        deadline = time.monotonic() + 5
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(child_pid), "the trainer outlived the daemon that started it"
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()
        if child_pid and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def test_progress_messages_that_share_a_line_are_each_read() -> None:
    """Two torchrun ranks' digests ran into one line in CI under load (the ranks share one stdout
    pipe); a progress bar's unfinished line can precede a message too. Other output goes to the log."""
    import io

    digest = "01f09d4b026fd21bffc0001666e7ad7a1b4960b6a3d31b0be9330b069f961941"
    lines = [
        "Loading weights: 100%\n",
        f'EVOLVD_PROGRESS {{"type": "rank", "rank": 1, "lora_sha256": "{digest}"}}'
        f'EVOLVD_PROGRESS {{"type": "rank", "rank": 0, "lora_sha256": "{digest}"}}\n',
        'Generating train split: 23 examples\rEVOLVD_PROGRESS {"type": "done", "metrics": {}}\n',
        "EVOLVD_PROGRESS {not json\n",
    ]
    log = io.StringIO()
    messages = list(progress_messages(iter(lines), log))
    assert [(m["type"], m.get("rank")) for m in messages] == [("rank", 1), ("rank", 0), ("done", None)]
    assert log.getvalue() == (
        "Loading weights: 100%\nGenerating train split: 23 examples\r\nEVOLVD_PROGRESS {not json\n"
    )
