"""The admin API's answers as typed models: the daemon builds them, the API declares them (its
OpenAPI schema), and the CLI reads them. One definition on both sides of the wire, so a renamed
field fails `make typecheck` and the tests rather than printing a KeyError at an operator.

Every model forbids fields it does not declare: what the daemon sends is exactly what is written here.
Free-form maps stay only where their content is free by design: a policy decision's `inputs` (each
policy records what it read), the drift features' `detail`, a run's `metrics` and `config`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _decoded(value: object) -> object:
    """A JSON column as the buffer returns it (text) or as the API sent it (decoded)."""
    return json.loads(value) if isinstance(value, str) else value


JsonObject = Annotated[dict[str, JsonValue] | None, BeforeValidator(_decoded)]
JsonStrings = Annotated[list[str], BeforeValidator(_decoded)]


# -- /status: the daemon -----------------------------------------------------------------------


class KafkaStatus(Answer):
    bootstrap_servers: str
    embedded: bool
    topic: str
    group_id: str


class PartitionStatus(Answer):
    topic: str
    partition: int
    buffer_offset: int | None
    highwater: int | None
    lag: int | None


class PartitionAheadStatus(Answer):
    """A partition whose consumer-group offset is past the buffer's: another daemon in the group?"""

    partition: int
    group_offset: int
    buffer_offset: int | None


class WriterStatus(Answer):
    failing_s: float
    attempts: int
    last_error: str | None


class IngestStatus(Answer):
    running: bool
    paused_by_backpressure: bool
    backlog: int | None
    backlog_high_watermark: int
    restarts: int
    last_error: str | None
    writer: WriterStatus
    fetcher_pid: int | None
    lag_total: int
    partitions: list[PartitionStatus]
    group_ahead: list[PartitionAheadStatus]


class BufferStatus(Answer):
    path: str
    schema_version: int
    tables: dict[str, int]
    events_by_state: dict[str, int]


class DeadLetterStatus(Answer):
    total: int
    by_reason: dict[str, int]


class BaseModelStatus(Answer):
    name: str
    path: str
    sha256: str


class ServingStatus(Answer):
    """`state` is `disabled` (serving.enabled: false; nothing else is set), `not started`, or the
    supervisor's state of the vLLM process."""

    state: str
    url: str | None = None
    pid: int | None = None
    restarts: int = 0
    base_model: BaseModelStatus | None = None
    gateway_url: str | None = None
    public_model_name: str | None = None
    live: str | None = None
    previous: str | None = None
    canary: str | None = None
    loaded_adapters: list[str] = []
    replicas: list[str] = []
    """A fleet's replicas (serving.replica_urls), each checked on every swap; empty for one server."""
    adapter_dir: str | None = None
    """The fleet's shared adapter directory (serving.adapter_dir), where adapters are published."""


# -- /status: the policies ---------------------------------------------------------------------


class PolicyInForce(Answer):
    source: str
    """The file it was read from, or `<default>` for the shipped one."""
    hash: str


class MmdStatus(Answer):
    mmd2: float
    p_value: float
    permutations: int


class FeatureTestStatus(Answer):
    statistic: float
    p_value: float
    drifted: bool
    detail: dict[str, JsonValue]


class DriftReportStatus(Answer):
    reference_kind: str
    n_reference: int
    n_recent: int
    mmd: MmdStatus
    significant: bool
    trigger_fired: bool
    guard_tripped: bool
    features: dict[str, FeatureTestStatus]


class DriftStatus(Answer):
    note: str | None
    report: DriftReportStatus | None


class PolicyDecisionStatus(Answer):
    policy: str
    policy_hash: str
    subject_kind: str
    subject_id: str
    outcome: str
    reasons: list[str]
    inputs: dict[str, JsonValue]


class PolicyStatus(Answer):
    directory: str | None
    in_force: dict[str, PolicyInForce]
    applied_at: float | None
    rejected: list[str]
    rejected_at: float | None
    weaker_than_shipped: dict[str, list[str]]
    drift: DriftStatus
    training_gate: PolicyDecisionStatus | None


# -- /status: the loop -------------------------------------------------------------------------


class JobRunStatus(Answer):
    trigger: str
    outcome: str
    detail: str | None
    started_at: datetime | None
    finished_at: datetime | None


class JobStatus(Answer):
    job: str
    scheduled: bool
    trigger: str | None
    paused: bool
    next_run: datetime | None
    running: bool
    last: JobRunStatus | None


class ActiveRunStatus(Answer):
    run_id: str
    pid: int | None
    """The local trainer's PID; None for a cluster job."""
    job_id: str | None = None
    """The cluster job's id (training.launcher: ray)."""


class RunStatusRow(Answer):
    run_id: str
    dataset_id: str
    kind: str
    status: str
    attempt: int
    reason: str | None
    adapter_name: str | None
    metrics: JsonObject
    """The trainer's progress while running (phase, step, max_steps, loss), its results when done."""
    started_at: datetime | None
    finished_at: datetime | None


class EvaluationSummaryStatus(Answer):
    adapter_name: str
    baseline_name: str | None
    score: float | None
    baseline_score: float | None
    p_value: float | None
    created_at: datetime


class DecisionStatus(Answer):
    adapter: str
    outcome: str
    reasons: JsonStrings
    created_at: datetime


class CanaryStatus(Answer):
    adapter_name: str
    share: float
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None
    reason: str | None


class LeadershipStatus(Answer):
    """Who runs the loop's jobs: `sole` (a DuckDB buffer: this daemon, for good), or on a shared buffer
    `leader` / `standby` (evolvd.buffer.leadership)."""

    role: Literal["sole", "leader", "standby"]
    token: int | None
    """The fencing token of the term in force (every election adds one)."""
    leader: str | None
    """The member leading that term."""
    member: str | None
    """This member's name in the campaign."""
    error: str | None
    """The campaign's last database error, if its last attempt failed."""


class LoopStatus(Answer):
    leadership: LeadershipStatus
    jobs: list[JobStatus]
    training_now: ActiveRunStatus | None
    runs: list[RunStatusRow]
    evaluations: list[EvaluationSummaryStatus]
    promotion_decisions: list[DecisionStatus]
    canaries: list[CanaryStatus]


class LabelerStatus(Answer):
    """A labeler process (`--role label`) on a shared buffer."""

    claimant: str
    """Its name on the events it claims."""
    model: str | None
    """The model it labels with (None until the server answered)."""
    running: bool
    labeled: int
    rounds_failed: int
    last_error: str | None


class GatewayMemberStatus(Answer):
    """A gateway member (`--role gateway`): where it proxies and the routing it follows."""

    member: str
    url: str | None
    upstream: str
    upstream_ok: bool
    public_model_name: str
    routing_generation: int | None
    """None until the swapping daemon has published a routing (requests get 503 until then)."""
    live: str | None
    canary: str | None
    canary_share: float
    routing_read_age_s: float | None
    routing_read_error: str | None
    """Set while the buffer cannot be read: the member serves the last routing it read."""
    outcomes_dropped: int


class DaemonStatus(Answer):
    """GET /status. A part the daemon's role does not run has no section (None)."""

    version: str
    state: str
    pid: int
    uptime_s: float
    kafka: KafkaStatus | None = None
    ingest: IngestStatus | None = None
    labeling: LabelerStatus | None = None
    buffer: BufferStatus
    dead_letters: DeadLetterStatus
    serving: ServingStatus
    policies: PolicyStatus | None = None
    """None on a daemon that runs no policies (an ingest member, `--role ingest`)."""
    loop: LoopStatus | None = None
    """None on a daemon that runs no loop (an ingest member)."""
    gateway: GatewayMemberStatus | None = None
    """A gateway member's (`--role gateway`) routing; None on every other role."""
    config: dict[str, JsonValue]
    """The configuration in force (secrets are read from files or variables and never appear here)."""


# -- /adapters and the swaps -------------------------------------------------------------------


class AdapterListing(Answer):
    name: str
    version: int
    status: str
    parent: str | None
    reason: str | None
    path: str
    created_at: datetime
    updated_at: datetime | None


class SwapRow(Answer):
    swap_id: int
    action: str
    outcome: str
    from_: str | None = Field(alias="from")
    to: str | None
    reason: str | None
    duration_ms: float | None
    created_at: datetime

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class AdapterList(Answer):
    """GET /adapters."""

    adapters: list[AdapterListing]
    swaps: list[SwapRow]


class SwapOutcome(Answer):
    """What a promote, canary, stop or rollback did."""

    action: str
    from_adapter: str | None
    to_adapter: str | None
    duration_ms: float


class JobList(Answer):
    """GET /jobs."""

    jobs: list[JobStatus]


class JobAction(Answer):
    """POST /jobs/{name}/{action}: pause and resume answer `ok`; run answers whether it `started`."""

    job: str
    action: str
    ok: bool = True
    started: bool | None = None
    reason: str | None = None
    """Why a run did not start (the job is already running)."""


class Registered(Answer):
    """POST /adapters: the unique name the registered adapter got."""

    name: str


class PolicyReload(PolicyStatus):
    """POST /policies/reload: what the reload did, then the policies in force."""

    outcome: str


# -- /adapters/{name}: lineage -----------------------------------------------------------------


class RunRecord(Answer):
    run_id: str
    dataset_id: str
    kind: str
    status: str
    attempt: int
    config: JsonObject
    """The run's hyperparameters and where its metrics went (`tensorboard`, `mlflow`)."""
    metrics: JsonObject
    reason: str | None
    adapter_name: str | None
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime


class DatasetRecord(Answer):
    dataset_id: str
    path: str
    n_examples: int
    n_pairs: int
    source_query: str | None
    created_at: datetime
    n_replay: int
    pairs_path: str | None
    n_anchor: int


class KafkaOffsets(Answer):
    """The Kafka offsets of the events behind a data set, per topic and partition."""

    topic: str
    partition: int
    events: int
    first_offset: int
    last_offset: int
    offsets: list[int]


class EvaluationRecord(Answer):
    suite: str
    baseline_name: str | None
    score: float | None
    baseline_score: float | None
    p_value: float | None
    details: JsonObject
    created_at: datetime


class DecisionRecord(Answer):
    policy: str
    outcome: str
    reasons: JsonStrings
    created_at: datetime


class SwapRecord(Answer):
    action: str
    outcome: str
    from_adapter: str | None
    to_adapter: str | None
    reason: str | None
    created_at: datetime


class LineageNode(Answer):
    name: str
    version: int
    status: str
    parent: str | None
    reason: str | None
    path: str
    run_id: str | None
    manifest: dict[str, JsonValue]
    created_at: datetime
    updated_at: datetime | None
    run: RunRecord | None
    dataset: DatasetRecord | None
    kafka_offsets: list[KafkaOffsets]
    evaluations: list[EvaluationRecord]
    decisions: list[DecisionRecord]
    swaps: list[SwapRecord]


class Lineage(Answer):
    """GET /adapters/{name}: the adapter, then its parents, nearest first."""

    adapter: LineageNode
    ancestors: list[LineageNode]


# -- /policies/dry-run -------------------------------------------------------------------------


class ExampleMoves(Answer):
    transitions: dict[str, int]
    """`<old outcome>-><new outcome>`: how many screened examples would change their safety outcome."""
    newly_quarantined: list[int]
    newly_released: list[int]


class GateComparison(Answer):
    current: PolicyDecisionStatus
    candidate: PolicyDecisionStatus
    changes: bool


class DriftSummary(Answer):
    mmd2: float
    p_value: float
    trigger: bool
    guard: bool


class DriftComparison(Answer):
    current: DriftSummary | None
    candidate: DriftSummary | None


class DryRunReport(Answer):
    """POST /policies/dry-run: what edited policy files would change on the buffer; nothing applied."""

    applied: bool
    policies_changed: dict[str, str]
    """Policy name -> the edited file's content hash, for each policy whose content differs."""
    examples: ExampleMoves
    training_gate: GateComparison
    drift: DriftComparison
    seconds: float
