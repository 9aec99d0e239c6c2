"""Runs one training attempt in a child process and records it: the run row (status, progress,
metrics, failure reason), Prometheus metrics, and on success the adapter folder with its manifest.

The child may crash, be OOM-killed or hang; each ends as a failed run with a reason the operator can
read, and the daemon keeps serving. Retries are the training job's decision (with backoff)."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from evolvd.adapter_folder import ADAPTER_WEIGHTS, file_sha256, write_manifest
from evolvd.buffer import Buffer
from evolvd.lifeline import child_environment
from evolvd.metrics import TrainingMetrics
from evolvd.training.child import PROGRESS_PREFIX
from evolvd.training.launchers import Launcher, LocalLauncher, Trainer
from evolvd.training.runs import RunStore
from evolvd.training.snapshot import Snapshot
from evolvd.training.spec import Hyperparameters, TrainSpec

logger = logging.getLogger("evolvd.training")

# How often progress is written into the run row (each step still updates the metrics).
ROW_UPDATE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    succeeded: bool
    reason: str | None
    adapter_path: Path | None
    metrics: dict[str, Any]


def run_id_for(dataset_id: str, attempt: int) -> str:
    return f"run-{dataset_id[:12]}-{attempt}"


def _exit_reason(returncode: int, error: str | None) -> str:
    if error:
        return error
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory, or killed by an operator)" if name == "SIGKILL" else ""
        return f"trainer killed by {name}{hint}"
    return f"trainer exited with status {returncode} and no reason (see its log)"


@dataclass(frozen=True)
class MlflowTarget:
    tracking_uri: str
    experiment: str


class TrainingRunner:
    def __init__(
        self,
        buffer: Buffer,
        runs_dir: Path,
        base_model: Path,
        base_model_hash: str,
        metrics: TrainingMetrics | None,
        timeout_s: float,
        python: str = sys.executable,
        mlflow: MlflowTarget | None = None,
        processes: int = 1,
        launcher: Launcher | None = None,
    ) -> None:
        """`mlflow`: (tracking URI, experiment) to log each run to as well (training.mlflow_*).
        `processes`: data-parallel ranks (torchrun); 1 runs the child alone. `launcher`: where the
        trainer runs (evolvd.training.launchers; default: a child of this process)."""
        self._mlflow = mlflow
        self._processes = processes
        self._launcher = launcher or LocalLauncher(python, processes)
        self._runs = RunStore(buffer)
        self._runs_dir = runs_dir
        self._base_model = base_model
        self._base_model_hash = base_model_hash
        self._metrics = metrics
        self._timeout_s = timeout_s
        self.current: Trainer | None = None
        """The trainer while a run is in flight (tests kill it to prove a crash is survived)."""
        self.current_run_id: str | None = None

    def active(self) -> dict[str, Any] | None:
        """The run in flight and its trainer's PID or cluster job (for the status page), or None."""
        trainer, run_id = self.current, self.current_run_id
        if trainer is None or run_id is None:
            return None
        return {"run_id": run_id, "pid": trainer.pid, "job_id": trainer.job_id}

    def run(
        self,
        snapshot: Snapshot,
        hyperparameters: Hyperparameters,
        attempt: int,
        parent: tuple[str, Path] | None,
        stop: threading.Event,
        use_pairs: bool,
    ) -> RunOutcome:
        run_id = run_id_for(snapshot.dataset_id, attempt)
        run_dir = self._runs_dir / run_id
        shutil.rmtree(run_dir, ignore_errors=True)  # a leftover of a crashed daemon
        run_dir.mkdir(parents=True)
        spec = TrainSpec(
            run_id=run_id,
            base_model=str(self._base_model),
            dataset=str(snapshot.path),
            output_dir=str(run_dir / "adapter"),
            work_dir=str(run_dir / "work"),
            pairs=str(snapshot.pairs_path) if use_pairs and snapshot.pairs_path else None,
            parent_adapter=str(parent[1]) if parent else None,
            hyperparameters=hyperparameters,
            tensorboard_dir=str(run_dir / "tensorboard"),
            mlflow_tracking_uri=self._mlflow.tracking_uri if self._mlflow else None,
            mlflow_experiment=self._mlflow.experiment if self._mlflow else "evolvd",
        )
        spec.write(run_dir / "spec.json")
        kind = "sft+dpo" if spec.pairs else "sft"
        config = {
            **asdict(hyperparameters),
            "parent": parent[0] if parent else None,
            "spec": str(run_dir),
            "tensorboard": spec.tensorboard_dir,
            "mlflow": {
                "tracking_uri": spec.mlflow_tracking_uri,
                "experiment": spec.mlflow_experiment,
                "runs": [f"{run_id}-sft", f"{run_id}-dpo"] if spec.pairs else [f"{run_id}-sft"],
            }
            if spec.mlflow_tracking_uri
            else None,
        }
        self._runs.start(run_id, snapshot.dataset_id, kind, attempt, config)
        logger.info(
            "training run %s started: %d examples (%d replay), %s",
            run_id,
            snapshot.n_examples,
            snapshot.n_replay,
            kind,
        )
        started = time.monotonic()
        if self._metrics is not None:
            self._metrics.running.set(1)
        try:
            succeeded, reason, metrics = self._supervise(spec, run_dir, stop)
        finally:
            if self._metrics is not None:
                self._metrics.running.set(0)
        duration = time.monotonic() - started
        adapter = Path(spec.output_dir)
        if succeeded:
            try:
                self._write_manifest(adapter, spec, snapshot, parent, metrics)
            except OSError as exc:
                succeeded, reason = False, f"could not write the adapter manifest: {exc}"
        self._runs.finish(run_id, succeeded, reason, metrics)
        if self._metrics is not None:
            self._metrics.runs.labels("succeeded" if succeeded else "failed").inc()
            self._metrics.run_seconds.observe(duration)
        if succeeded:
            logger.info("training run %s succeeded in %.0f s: %s", run_id, duration, metrics)
        else:
            logger.error("training run %s failed after %.0f s: %s", run_id, duration, reason)
        return RunOutcome(run_id, succeeded, reason, adapter if succeeded else None, metrics)

    def _supervise(
        self, spec: TrainSpec, run_dir: Path, stop: threading.Event
    ) -> tuple[bool, str | None, dict[str, Any]]:
        log_path = run_dir / "trainer.log"
        env = {
            **child_environment(),  # the child dies with the daemon (evolvd.lifeline): no orphan trains on
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        spec_path = str(run_dir / "spec.json")
        with open(log_path, "w") as log:
            try:
                trainer = self._launcher.start(spec_path, spec.run_id, log, env)
            except Exception as exc:  # a cluster that refuses the job fails this attempt
                return False, f"could not start the trainer: {exc}", {}
            self.current, self.current_run_id = trainer, spec.run_id
            state: dict[str, Any] = {"error": None, "metrics": {}, "progress": {}, "ranks": {}}
            reader = threading.Thread(
                target=self._read_progress, args=(trainer.lines(), log, spec.run_id, state), daemon=True
            )
            reader.start()
            deadline = time.monotonic() + self._timeout_s
            timed_out = stopped = False
            while trainer.poll() is None:
                if stop.wait(0.5):
                    stopped = True
                elif time.monotonic() > deadline:
                    timed_out = True
                else:
                    continue
                trainer.stop()
                break
            returncode = trainer.wait()
            reader.join(timeout=10)
            trainer.close()
            self.current = self.current_run_id = None
        if stopped:
            return (
                False,
                "daemon stopping: the run was interrupted (retried after restart)",
                state["progress"],
            )
        if timed_out:
            return (
                False,
                f"trainer timed out after {self._timeout_s:.0f} s (training.timeout_s)",
                state["progress"],
            )
        if returncode == 0 and state["metrics"]:
            return self._ranks_agree(state["metrics"], state["ranks"])
        reason = state["error"] or trainer.failure()
        return False, _exit_reason(returncode, reason), state["progress"]

    def _ranks_agree(
        self, metrics: dict[str, Any], digests: dict[int, str]
    ) -> tuple[bool, str | None, dict[str, Any]]:
        """A data-parallel run succeeded only if every rank ended with the same LoRA weights."""
        ordered = [digests.get(r) for r in range(self._processes)]
        metrics = {**metrics, "rank_lora_sha256": ordered}
        if None in ordered:
            missing = [r for r, d in enumerate(ordered) if d is None]
            return False, f"ranks {missing} reported no LoRA weights", metrics
        if len(set(ordered)) != 1:
            return False, f"the {self._processes} ranks ended with different LoRA weights", metrics
        return True, None, metrics

    def _read_progress(self, stream: Iterator[str], log: IO[str], run_id: str, state: dict[str, Any]) -> None:
        last_row_update = 0.0
        for message in progress_messages(stream, log):
            kind = message.get("type")
            if kind == "progress":
                state["progress"] = {k: message[k] for k in ("phase", "step", "max_steps", "loss")}
                if self._metrics is not None:
                    self._metrics.steps.labels(message["phase"]).inc()
                    self._metrics.loss.labels(message["phase"]).set(message["loss"])
                if time.monotonic() - last_row_update > ROW_UPDATE_INTERVAL_S:
                    last_row_update = time.monotonic()
                    self._runs.progress(run_id, state["progress"])
            elif kind == "done":
                state["metrics"] = message.get("metrics", {})
            elif kind == "rank":
                state["ranks"][int(message["rank"])] = str(message["lora_sha256"])
            elif kind == "error":
                state["error"] = str(message.get("reason"))

    def _write_manifest(
        self,
        adapter: Path,
        spec: TrainSpec,
        snapshot: Snapshot,
        parent: tuple[str, Path] | None,
        metrics: dict[str, Any],
    ) -> None:
        manifest = {
            "run_id": spec.run_id,
            "base_model": spec.base_model,
            "base_model_sha256": self._base_model_hash,
            "dataset_id": snapshot.dataset_id,
            "dataset_examples": snapshot.n_examples,
            "dataset_replay": snapshot.n_replay,
            "dataset_pairs": snapshot.n_pairs if spec.pairs else 0,
            "parent_adapter": parent[0] if parent else None,
            "hyperparameters": asdict(spec.hyperparameters),
            "metrics": metrics,
            "weights_sha256": file_sha256(adapter / ADAPTER_WEIGHTS),
        }
        write_manifest(adapter, manifest)


def progress_messages(stream: Iterator[str], log: IO[str]) -> Iterator[dict[str, Any]]:
    """The children's progress messages in `stream`; everything else goes to `log`. A message may
    follow other output on its line (another rank's unfinished line, a progress bar's carriage
    returns), so each occurrence of PROGRESS_PREFIX starts one."""
    for line in stream:
        head, *messages = line.split(PROGRESS_PREFIX)
        if not messages:
            log.write(line)
        elif head:
            log.write(head.rstrip("\n") + "\n")
        for text in messages:
            try:
                message = json.loads(text)
            except ValueError:
                log.write(PROGRESS_PREFIX + text)
                continue
            if isinstance(message, dict):
                yield message
