"""The bodies of the loop's scheduled jobs: label, screen and gate, train, evaluate, promote, retain.

Each body reads what to do from the buffer (run rows, adapter statuses, evaluation rows), so a job
interrupted by a crash simply finds its work again on the next run."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import time
from collections.abc import Callable

from evolvd.buffer import Buffer
from evolvd.buffer.retention import RetentionCutoffs, age_out
from evolvd.config import EvolvdConfig
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.evaluation.evaluator import Evaluator
from evolvd.labeling.labeler import Labeler
from evolvd.loop.promotion import Promoter
from evolvd.loop.scheduler import JobResult
from evolvd.metrics import TrainingMetrics
from evolvd.policies.engine import PolicyEngine
from evolvd.policies.loader import safety_anchor_examples
from evolvd.serving.registry import AdapterRegistry
from evolvd.serving.service import ServingService, SwapError
from evolvd.training.launchers import launcher_for
from evolvd.training.runner import MlflowTarget, TrainingRunner
from evolvd.training.runs import RunStore
from evolvd.training.snapshot import Snapshot, freeze_snapshot, stale_dataset_files, stored_snapshot
from evolvd.training.spec import Hyperparameters, hyperparameters_for

logger = logging.getLogger("evolvd.loop")

# Longest a labeling job run keeps draining the backlog before it reports and yields to the next tick.
LABELING_RUN_BUDGET_S = 60.0


class Loop:
    def __init__(
        self,
        config: EvolvdConfig,
        buffer: Buffer,
        policy_engine: PolicyEngine,
        serving: ServingService | None,
        labeler: Labeler | None,
        evaluator: Evaluator,
        promoter: Promoter | None,
        training_metrics: TrainingMetrics,
        client: Callable[[], VLLMClient | None],
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._buffer = buffer
        self._engine = policy_engine
        self._serving = serving
        self._labeler = labeler
        self._evaluator = evaluator
        self._promoter = promoter
        self._training_metrics = training_metrics
        self._client = client
        self._stop = stop
        self._runs = RunStore(buffer)
        self._adapters = AdapterRegistry(buffer)
        self.runner: TrainingRunner | None = None
        self._evaluating: str | None = None

    def bodies(self) -> dict[str, Callable[[], JobResult]]:
        bodies = {"policies": self.policies, "retention": self.retention}
        if self._serving is not None:
            bodies.update(training=self.training, evaluation=self.evaluation)
            if self._promoter is not None:
                bodies["promotion"] = self._promoter.step
            if self._labeler is not None:
                bodies["labeling"] = self.labeling
        return bodies

    # -- labeling and policies ------------------------------------------------------------------

    def _loop_busy(self) -> str | None:
        """What labeling makes way for (labeling.yield_to_loop): a run training, a candidate under
        evaluation; None when neither."""
        if not self._config.labeling.yield_to_loop:
            return None
        if self.runner is not None and (run_id := self.runner.current_run_id) is not None:
            return f"{run_id} is training"
        if (candidate := self._evaluating) is not None:
            return f"{candidate} is being evaluated"
        return None

    def labeling(self) -> JobResult:
        assert self._labeler is not None
        total = 0
        # Drain the backlog, but end the run after a while so its outcome (and the events labeled)
        # shows in the job history; the next tick goes on.
        ends = time.monotonic() + LABELING_RUN_BUDGET_S
        while not self._stop.is_set() and time.monotonic() < ends:
            if (busy := self._loop_busy()) is not None:
                waits = f"{busy}: labeling waits (labeling.yield_to_loop)"
                if total:
                    return JobResult("ok", f"labeled {total} events; {waits}")
                return JobResult("idle", waits)
            labeled = self._labeler.run_once()
            if labeled == 0:
                break
            total += labeled
        return JobResult("ok", f"labeled {total} events") if total else JobResult("idle", "nothing pending")

    def policies(self) -> JobResult:
        self._engine.tick()
        gate = self._engine.last_gate
        if gate is None:
            return JobResult("ok", "policies evaluated")
        detail = (
            "training gate: pass" if gate.outcome == "pass" else "training gate: " + "; ".join(gate.reasons)
        )
        return JobResult("ok", detail)

    # -- training -------------------------------------------------------------------------------

    def _runner(self) -> TrainingRunner:
        if self.runner is None:
            assert self._serving is not None
            base = self._serving.started_base()
            training = self._config.training
            processes = training.processes if training.launcher != "local" else 1
            self.runner = TrainingRunner(
                self._buffer,
                self._config.data_dir / "runs",
                base.path,
                base.content_hash,
                self._training_metrics,
                training.timeout_s,
                mlflow=MlflowTarget(training.mlflow_tracking_uri, training.mlflow_experiment)
                if training.mlflow_tracking_uri
                else None,
                processes=processes,
                launcher=launcher_for(training, processes),
            )
        return self.runner

    def _hyperparameters(self, n_examples: int) -> Hyperparameters:
        return hyperparameters_for(self._config.training, n_examples)

    def training(self) -> JobResult:
        cfg = self._config.training
        if not cfg.enabled:
            return JobResult("idle", "training.enabled is false")
        # One candidate at a time: the next run learns on top of whatever the decision makes live.
        pending = self._adapters.undecided_trained()
        if pending is not None:
            return JobResult("idle", f"{pending[0]} is {pending[1]}: the next run waits for its decision")
        self._runs.fail_interrupted()  # no run of this daemon is in progress: the training job starts them
        failed = self._runs.last_failed()
        attempt = 1
        if failed is not None and failed.attempt < cfg.max_attempts:
            wait = cfg.retry_backoff_s * 2 ** (failed.attempt - 1)
            due = failed.finished_at + dt.timedelta(seconds=wait)
            now = dt.datetime.now(dt.UTC)
            if now < due:
                return JobResult(
                    "idle",
                    f"{failed.run_id} failed ({failed.reason}); retry in {(due - now).total_seconds():.0f} s",
                )
            stored = stored_snapshot(self._buffer.cursor(), failed.dataset_id)
            assert stored is not None, f"run {failed.run_id}'s data set {failed.dataset_id} is not recorded"
            snapshot, attempt = stored, failed.attempt + 1
        else:
            policies = self._engine.current_policies()
            gate = self._engine.gate_decision(policies, self._engine.last_drift)
            if gate.outcome != "pass":
                return JobResult("idle", "training gate blocks: " + "; ".join(gate.reasons))
            frozen = freeze_snapshot(
                self._buffer.cursor(),
                self._config.data_dir / "datasets",
                policies.training.min_confidence,
                cfg.replay_share,
                self._config.evaluation.heldout_percent,
                anchors=safety_anchor_examples(self._config.policies.dir),
                anchor_share=policies.training.safety_anchor_share,
            )
            if frozen is None:
                return JobResult("idle", "no usable new examples to snapshot")
            self._training_metrics.datasets.inc()
            snapshot = frozen
        return self._train(snapshot, attempt)

    def _train(self, snapshot: Snapshot, attempt: int) -> JobResult:
        assert self._serving is not None
        cfg = self._config.training
        parent = None
        live = self._adapters.live()
        if cfg.init_from == "live" and live is not None:
            row = self._adapters.get(live)
            parent = (live, row.path) if row is not None else None
        use_pairs = cfg.dpo_steps > 0 and snapshot.n_pairs >= cfg.dpo_min_pairs
        outcome = self._runner().run(
            snapshot, self._hyperparameters(snapshot.n_examples), attempt, parent, self._stop, use_pairs
        )
        if not outcome.succeeded:
            return JobResult(
                "failed", f"{outcome.run_id} (attempt {attempt}/{cfg.max_attempts}): {outcome.reason}"
            )
        assert outcome.adapter_path is not None
        try:
            name = self._serving.register_trained(outcome.adapter_path, live, outcome.run_id)
        except SwapError as exc:
            self._runs.fail(outcome.run_id, f"the trained adapter was rejected: {exc}")
            return JobResult("failed", f"{outcome.run_id}: the trained adapter was rejected: {exc}")
        self._runs.attach_adapter(outcome.run_id, name)
        loss = outcome.metrics.get("sft_loss")
        detail = f"{outcome.run_id} trained {name} on {snapshot.n_examples} examples"
        mix = f"{snapshot.n_replay} replay, {snapshot.n_anchor} safety anchor"
        return JobResult("ok", f"{detail} ({mix}): loss {loss}")

    # -- evaluation -----------------------------------------------------------------------------

    def evaluation(self) -> JobResult:
        assert self._serving is not None
        client = self._client()
        if client is None:
            return JobResult("idle", "serving is not ready")
        serving = self._serving
        live = serving.serving_name()
        name = self._adapters.next_to_evaluate(live)
        if name is None:
            return JobResult("idle", "no candidate to evaluate")
        try:
            serving.begin_evaluation(name, live)
        except SwapError as exc:  # recorded as rejected by the swapper, with the reason
            return JobResult("ok", f"{name} rejected before evaluation: {exc}")
        self._evaluating = name
        try:
            result = self._evaluator.evaluate(
                client,
                name,
                live,
                serving.started_base().name,
                self._engine.current_policies(),
                self._config.policies.dir,
            )
        except Exception:
            serving.evaluation_failed(name)
            raise
        finally:
            self._evaluating = None
        scores = f"held-out {result.heldout_score:.3f} vs {result.live_heldout_score:.3f} live"
        return JobResult("ok", f"{name}: {scores} (n={result.heldout_n}, p={result.p_value:.4f})")

    # -- retention ------------------------------------------------------------------------------

    def retention(self) -> JobResult:
        cfg = self._config.retention
        con = self._buffer.cursor()
        removed = 0
        for file in stale_dataset_files(con, cfg.keep_datasets):
            if file.exists():
                file.unlink()
                removed += 1
        keep = self._serving.resident() if self._serving is not None else set()
        store = self._config.adapter_store_dir
        for name, path, run_id in self._adapters.disposable(cfg.keep_adapters):
            if name in keep:  # never delete what serves
                continue
            # The registered copy in the daemon's store, and the run folder evolvd trained it in; never
            # a folder evolvd did not write (an adapter registered before the store is served in place).
            owned = [path] if path.parent == store else []
            if run_id is not None:
                owned.append(self._config.data_dir / "runs" / run_id)
            for folder in owned:
                if folder.exists():
                    shutil.rmtree(folder)
                    removed += 1
        aged = age_out(
            con,
            RetentionCutoffs(
                cfg.events_days,
                cfg.dead_letters_days,
                cfg.job_runs_days,
                cfg.max_events,
                cfg.max_dead_letters,
            ),
        )
        if not removed and not aged.total:
            return JobResult("idle", "nothing to remove")
        rows = ", ".join(f"{table} {n}" for table, n in aged.deleted.items()) or "none"
        space = "; checkpoint deferred (a write was in progress)" if aged.checkpoint_deferred else ""
        return JobResult("ok", f"removed {removed} old files; rows aged out: {rows}{space}")
