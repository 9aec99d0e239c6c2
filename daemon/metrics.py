"""Prometheus metrics. Each component gets its metric set from a factory taking a registry, so tests
use a fresh registry; values cheaper to read at scrape time come from collectors (see BufferCollector).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    platform_collector,
    process_collector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from evolvd import __version__
from evolvd.contract import DeadLetterReason
from evolvd.jobs import JOB_OUTCOMES, JOBS

# The label values each metric can take, known up front. Series are created with them at startup,
# as the Prometheus instrumentation guide advises: a labelled counter that first appears at 5 hides
# those 5 from rate()/increase(), and a dashboard or alert on a series that does not exist yet reads
# "no data" instead of 0.
POLICY_OUTCOMES = {
    "safety": ("allow", "redact", "quarantine"),
    "drift": ("pass", "trigger", "block"),
    "training": ("pass", "block"),
    "promotion": ("promote", "canary", "reject"),
    "policy_file": ("applied", "rejected"),
}
SWAP_ACTIONS = ("promote", "canary", "rollback", "evaluate", "register", "reapply", "restore")
EVALUATION_SUITES = ("heldout", "forgetting", "safety", "output_drift")
GATEWAY_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize")
TRAINING_PHASES = ("sft", "dpo")


def _combinations(label_sets: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for values in label_sets:
        combos = [(*combo, v) for combo in combos for v in values]
    return combos


def initialise(metric: Counter | Histogram, *label_sets: Sequence[str]) -> None:
    """Create the child series of every combination of the label values given (counters start at 0)."""
    for combo in _combinations(label_sets):
        metric.labels(*combo)


def initialise_unknown(gauge: Gauge, *label_sets: Sequence[str]) -> None:
    """Create a gauge's child series as NaN: unknown until measured, never a made-up 0."""
    for combo in _combinations(label_sets):
        gauge.labels(*combo).set(math.nan)


def new_registry() -> CollectorRegistry:
    """A registry with evolvd's build info and the standard process/platform collectors."""
    # `_created` series double every counter's series count and no dashboard reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    process_collector.ProcessCollector(registry=registry)
    platform_collector.PlatformCollector(registry=registry)
    Info("evolvd_build", "evolvd build information", registry=registry).info({"version": __version__})
    return registry


@dataclass(frozen=True)
class IngestMetrics:
    messages: Counter
    dead_letters: Counter
    batches: Counter
    write_seconds: Histogram
    write_errors: Counter
    writer_failing_seconds: Gauge
    paused: Gauge
    backpressure_pauses: Counter
    lag: Gauge
    restarts: Counter
    group_ahead: Gauge

    def __post_init__(self) -> None:
        initialise(self.messages, ("event", "duplicate", "feedback", "dead_letter"))
        initialise(self.dead_letters, [reason.value for reason in DeadLetterReason])

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            messages=Counter(
                "evolvd_ingest_messages_total",
                "Kafka messages ingested, by outcome (event, duplicate, feedback, dead_letter)",
                ["outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "evolvd_dead_letters_total",
                "Messages that failed the contract, by reason",
                ["reason"],
                registry=registry,
            ),
            batches=Counter(
                "evolvd_ingest_batches_total", "Buffer transactions written by ingest", registry=registry
            ),
            write_seconds=Histogram(
                "evolvd_ingest_batch_write_seconds",
                "Time to write one ingest transaction to the buffer",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=registry,
            ),
            write_errors=Counter(
                "evolvd_ingest_write_errors_total",
                "Failed buffer writes (retried; nothing is acknowledged)",
                registry=registry,
            ),
            writer_failing_seconds=Gauge(
                "evolvd_ingest_writer_failing_seconds",
                "Seconds the ingest writer has failed to write the batch in hand (0 while writes succeed)",
                registry=registry,
            ),
            paused=Gauge(
                "evolvd_ingest_paused", "1 while fetching is paused by backpressure", registry=registry
            ),
            backpressure_pauses=Counter(
                "evolvd_ingest_backpressure_pauses_total",
                "Times the backlog limit paused fetching",
                registry=registry,
            ),
            lag=Gauge(
                "evolvd_ingest_lag_messages",
                "Messages in the partition not yet durably in the buffer",
                ["topic", "partition"],
                registry=registry,
            ),
            restarts=Counter(
                "evolvd_ingest_restarts_total",
                "Times the ingest loop failed (e.g. its Kafka fetcher process died) and was restarted",
                registry=registry,
            ),
            group_ahead=Gauge(
                "evolvd_ingest_group_partitions_ahead",
                "Partitions whose consumer-group offset is past this buffer's (another daemon with its"
                " own buffer in the group, or a buffer restored from an older backup)",
                registry=registry,
            ),
        )


class BufferCollector(Collector):
    """Buffer row counts, backlog and the disk it lives on, read when Prometheus scrapes (no
    bookkeeping on the hot path)."""

    def __init__(
        self,
        counts: Callable[[], dict[str, int]],
        backlog: Callable[[], int],
        buffer_file: Path | None,
        data_dir: Path,
    ) -> None:
        """`buffer_file`: the DuckDB file; None for a PostgreSQL buffer (its server reports its own size)."""
        self._counts = counts
        self._backlog = backlog
        self._buffer_file = buffer_file
        self._data_dir = data_dir

    def collect(self) -> Iterable[Metric]:
        rows = GaugeMetricFamily("evolvd_buffer_rows", "Rows in each buffer table", labels=["table"])
        for table, n in sorted(self._counts().items()):
            rows.add_metric([table], n)
        yield rows
        yield GaugeMetricFamily(
            "evolvd_buffer_backlog_events",
            "Prompts waiting for the labeler (copies of one prompt count once)",
            value=self._backlog(),
        )
        if self._buffer_file is not None:
            yield GaugeMetricFamily(
                "evolvd_buffer_file_bytes",
                "Size of the DuckDB buffer file",
                value=self._buffer_file.stat().st_size if self._buffer_file.exists() else 0,
            )
        # The file system holding the adapters and data sets (and the DuckDB buffer): the data dir.
        disk = shutil.disk_usage(self._data_dir)
        yield GaugeMetricFamily(
            "evolvd_data_dir_free_bytes", "Free bytes on the file system of the data dir", value=disk.free
        )
        yield GaugeMetricFamily(
            "evolvd_data_dir_size_bytes", "Size of the file system of the data dir", value=disk.total
        )


@dataclass(frozen=True)
class ServingMetrics:
    swaps: Counter
    swap_seconds: Histogram
    rollbacks: Counter
    restarts: Counter
    up: Gauge
    live_adapter: Gauge
    gateway_requests: Counter
    gateway_seconds: Histogram
    gateway_refinements: Counter

    def __post_init__(self) -> None:
        initialise(self.gateway_refinements, ("replaced", "kept", "failed"))
        initialise(self.swaps, SWAP_ACTIONS, ("ok", "rejected"))
        initialise(self.rollbacks, ("ok", "rejected", "failed"))
        initialise(self.gateway_requests, GATEWAY_ROUTES, ("200",))
        initialise(self.gateway_seconds, GATEWAY_ROUTES)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ServingMetrics:
        return cls(
            swaps=Counter(
                "evolvd_adapter_swaps_total",
                "Adapter swaps, by action and outcome",
                ["action", "outcome"],
                registry=registry,
            ),
            swap_seconds=Histogram(
                "evolvd_adapter_swap_seconds",
                "Time from load request to alias flip (successful swaps)",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            rollbacks=Counter(
                "evolvd_adapter_rollbacks_total",
                "Rollbacks to the previous adapter, by outcome",
                ["outcome"],
                registry=registry,
            ),
            restarts=Counter(
                "evolvd_serving_restarts_total", "Restarts of the serving process", registry=registry
            ),
            up=Gauge("evolvd_serving_up", "1 while the serving process answers", registry=registry),
            live_adapter=Gauge(
                "evolvd_live_adapter_info",
                "The adapter the public model name resolves to",
                ["adapter"],
                registry=registry,
            ),
            gateway_requests=Counter(
                "evolvd_gateway_requests_total",
                "Gateway requests by route and status",
                ["route", "status"],
                registry=registry,
            ),
            gateway_seconds=Histogram(
                "evolvd_gateway_request_seconds",
                "Gateway request latency (to the last byte) by route",
                ["route"],
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                registry=registry,
            ),
            gateway_refinements=Counter(
                "evolvd_gateway_refinements_total",
                "Self-refined gateway answers (gateway.self_refine): replaced, kept or failed",
                ["outcome"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class GatewayMemberMetrics:
    """A gateway member's (`--role gateway`) view of the routing it follows."""

    routing_generation: Gauge
    routing_last_read: Gauge
    routing_read_failures: Counter
    outcomes_dropped: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMemberMetrics:
        return cls(
            routing_generation=Gauge(
                "evolvd_gateway_routing_generation",
                "Generation of the routing this gateway member serves (as the swapping daemon published it)",
                registry=registry,
            ),
            routing_last_read=Gauge(
                "evolvd_gateway_routing_last_read_timestamp_seconds",
                "When this gateway member last read the routing from the buffer",
                registry=registry,
            ),
            routing_read_failures=Counter(
                "evolvd_gateway_routing_read_failures_total",
                "Reads of the routing that failed (the member kept serving the last one it read)",
                registry=registry,
            ),
            outcomes_dropped=Gauge(
                "evolvd_gateway_served_outcomes_dropped",
                "Canary-window request outcomes this member dropped unwritten (buffer unreachable too long)",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class PolicyMetrics:
    decisions: Counter
    reloads: Counter
    rejected: Gauge
    in_force: Gauge
    drift_mmd: Gauge
    drift_p_value: Gauge
    drift_guard_tripped: Gauge
    drift_trigger_fired: Gauge
    feature_drift_p_value: Gauge
    evaluation_errors: Counter

    def __post_init__(self) -> None:
        for policy, outcomes in POLICY_OUTCOMES.items():
            initialise(self.decisions, (policy,), outcomes)
        initialise(self.reloads, ("applied", "rejected", "unchanged"))
        initialise(self.evaluation_errors, ("screen", "drift", "training_gate"))
        for unknown_until_measured in (self.drift_mmd, self.drift_p_value):
            unknown_until_measured.set(math.nan)
        initialise_unknown(self.feature_drift_p_value, ("length", "language", "topic"))

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PolicyMetrics:
        return cls(
            decisions=Counter(
                "evolvd_policy_decisions_total",
                "Policy decisions, by policy (safety, drift, training, promotion) and outcome",
                ["policy", "outcome"],
                registry=registry,
            ),
            reloads=Counter(
                "evolvd_policy_reloads_total",
                "Policy file reloads, by outcome (applied, rejected, unchanged)",
                ["outcome"],
                registry=registry,
            ),
            rejected=Gauge(
                "evolvd_policy_rejected",
                "1 while the policy files on disk are rejected and the previous policy stays in force",
                registry=registry,
            ),
            in_force=Gauge(
                "evolvd_policy_info",
                "The policy in force (value 1), labelled with its content hash",
                ["policy", "hash"],
                registry=registry,
            ),
            drift_mmd=Gauge(
                "evolvd_drift_mmd2", "MMD^2 between the recent prompts and the reference", registry=registry
            ),
            drift_p_value=Gauge(
                "evolvd_drift_p_value", "Permutation p-value of the embedding drift test", registry=registry
            ),
            drift_guard_tripped=Gauge(
                "evolvd_drift_guard_tripped", "1 while the drift guard blocks training", registry=registry
            ),
            drift_trigger_fired=Gauge(
                "evolvd_drift_trigger_fired",
                "1 while significant drift lowers the training bar",
                registry=registry,
            ),
            feature_drift_p_value=Gauge(
                "evolvd_feature_drift_p_value",
                "p-value of each simple feature drift test (length, language, topic)",
                ["feature"],
                registry=registry,
            ),
            evaluation_errors=Counter(
                "evolvd_policy_evaluation_errors_total",
                "Policy evaluations that failed, by check (screen, drift, training_gate)",
                # Not `job`: Prometheus's scrape-job label (it would be renamed exported_job).
                ["check"],
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class LabelMetrics:
    labels: Counter
    samples: Counter
    confidence: Histogram
    extraction_failures: Counter
    critique_scores: Counter
    refinements: Counter
    pairs: Counter
    examples: Counter
    errors: Counter
    duplicates: Counter

    def __post_init__(self) -> None:
        initialise(self.extraction_failures, ("number", "option", "yes_no", "span", "free_form"))
        initialise(self.critique_scores, ("expected", "ok", "constrained", "malformed", "missing"))
        initialise(self.refinements, ("accepted", "rejected"))
        initialise(self.pairs, ("critique", "vote"))

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LabelMetrics:
        return cls(
            labels=Counter(
                "evolvd_labels_total", "Events labeled (their rate is labels per second)", registry=registry
            ),
            samples=Counter(
                "evolvd_label_samples_total", "Answers sampled for self-consistency votes", registry=registry
            ),
            confidence=Histogram(
                "evolvd_label_confidence",
                "Winning vote share of each label",
                buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
                registry=registry,
            ),
            extraction_failures=Counter(
                "evolvd_label_extraction_failures_total",
                "Sampled answers with no readable final answer, by answer kind",
                ["kind"],
                registry=registry,
            ),
            critique_scores=Counter(
                "evolvd_critique_scores_total",
                "Self-critique scores, by parse status (ok, constrained, malformed, missing)",
                ["status"],
                registry=registry,
            ),
            refinements=Counter(
                "evolvd_refinements_total",
                "Self-refinements, by outcome (accepted, rejected)",
                ["outcome"],
                registry=registry,
            ),
            pairs=Counter(
                "evolvd_preference_pairs_total",
                "Self-generated preference pairs kept, by source (critique scores, votes)",
                ["source"],
                registry=registry,
            ),
            examples=Counter(
                "evolvd_training_examples_total", "Training examples written", registry=registry
            ),
            errors=Counter(
                "evolvd_label_errors_total", "Events whose labeling failed (retried)", registry=registry
            ),
            duplicates=Counter(
                "evolvd_label_duplicates_total",
                "Events not labeled because their prompt was labeled already (state duplicate)",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class TrainingMetrics:
    runs: Counter
    run_seconds: Histogram
    running: Gauge
    steps: Counter
    loss: Gauge
    datasets: Counter

    def __post_init__(self) -> None:
        initialise(self.runs, ("succeeded", "failed"))
        initialise(self.steps, TRAINING_PHASES)
        initialise_unknown(self.loss, TRAINING_PHASES)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainingMetrics:
        return cls(
            runs=Counter(
                "evolvd_training_runs_total", "Training runs, by outcome", ["outcome"], registry=registry
            ),
            run_seconds=Histogram(
                "evolvd_training_run_seconds",
                "Wall time of a training run (child process start to exit)",
                buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
                registry=registry,
            ),
            running=Gauge("evolvd_training_running", "1 while a training child runs", registry=registry),
            steps=Counter(
                "evolvd_training_steps_total",
                "Optimizer steps, by phase (sft, dpo)",
                ["phase"],
                registry=registry,
            ),
            loss=Gauge(
                "evolvd_training_loss", "Last logged training loss, by phase", ["phase"], registry=registry
            ),
            datasets=Counter(
                "evolvd_training_datasets_total", "Data set snapshots frozen for training", registry=registry
            ),
        )


@dataclass(frozen=True)
class LoopMetrics:
    """The scheduler's jobs, evaluation and promotion decisions."""

    job_runs: Counter
    job_seconds: Histogram
    job_paused: Gauge
    evaluation_score: Gauge
    evaluations: Counter
    promotions: Counter
    canary_active: Gauge

    def __post_init__(self) -> None:
        initialise(self.job_runs, JOBS, JOB_OUTCOMES)
        initialise(self.job_seconds, JOBS)
        initialise_unknown(self.evaluation_score, EVALUATION_SUITES, ("candidate", "live"))
        initialise(self.evaluations, ("completed", "failed"))
        initialise(self.promotions, ("promote", "canary", "reject", "rollback"))
        for job in JOBS:
            self.job_paused.labels(job).set(0)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LoopMetrics:
        return cls(
            job_runs=Counter(
                "evolvd_job_runs_total",
                "Runs of the scheduled jobs, by loop job and outcome (ok, idle, skipped, failed)",
                ["loop_job", "outcome"],  # not `job`: Prometheus's scrape-job label
                registry=registry,
            ),
            job_seconds=Histogram(
                "evolvd_job_seconds",
                "Duration of a scheduled job run",
                ["loop_job"],
                buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
                registry=registry,
            ),
            job_paused=Gauge("evolvd_job_paused", "1 while a job is paused", ["loop_job"], registry=registry),
            evaluation_score=Gauge(
                "evolvd_evaluation_score",
                "Last evaluation score, by suite and role (candidate, live)",
                ["suite", "role"],
                registry=registry,
            ),
            evaluations=Counter(
                "evolvd_evaluations_total",
                "Candidate evaluations, by outcome (completed, failed)",
                ["outcome"],
                registry=registry,
            ),
            promotions=Counter(
                "evolvd_promotion_decisions_total",
                "Promotion decisions, by outcome (reject, canary, promote, rollback)",
                ["outcome"],
                registry=registry,
            ),
            canary_active=Gauge("evolvd_canary_active", "1 while a canary takes traffic", registry=registry),
        )
