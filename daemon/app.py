"""The daemon's lifecycle: startup() brings the parts up in order, run() supervises, shutdown() winds down.

A failed startup raises StartupError with a one-line reason (the CLI turns it into its own exit code).
A part that fails later is restarted with backoff while the rest keeps running on its last good state.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evolvd import __version__
from evolvd.abc import Source
from evolvd.admin import create_app
from evolvd.admin_token import AdminTokenError, configured_token, daemon_token
from evolvd.buffer import BufferLockedError, DuckDBBuffer, SchemaTooNewError
from evolvd.config import EvolvdConfig, as_dict
from evolvd.connectors.embedded_broker import EmbeddedBroker, EmbeddedBrokerError
from evolvd.connectors.group_offsets import GroupOffsetsCheck
from evolvd.connectors.kafka_process import KafkaProcessSource, open_kafka_source
from evolvd.connectors.kafka_source import KafkaUnavailableError, ensure_topic
from evolvd.http_server import HttpServer
from evolvd.ingest import IngestLoop
from evolvd.judge import JudgeSource
from evolvd.metrics import (
    BufferCollector,
    IngestMetrics,
    LoopMetrics,
    PolicyMetrics,
    ServingMetrics,
    TrainingMetrics,
    new_registry,
)
from evolvd.restart_backoff import RestartBackoff
from evolvd.status_models import DaemonStatus, Lineage, PartitionStatus
from evolvd.systemd import SystemdNotifier

if TYPE_CHECKING:
    from evolvd.connectors.vllm_client import VLLMClient
    from evolvd.demo import DemoWorkload
    from evolvd.labeling.labeler import Labeler
    from evolvd.loop.scheduler import LoopScheduler
    from evolvd.loop.steps import Loop
    from evolvd.policies.engine import PolicyEngine
    from evolvd.policies.loader import PolicySet
    from evolvd.policies.store import PolicyStore
    from evolvd.serving.self_refine import SelfRefiner
    from evolvd.serving.service import ServingService

logger = logging.getLogger("evolvd.daemon")

GIL_SWITCH_INTERVAL_S = 0.0002
"""The interpreter's thread switch interval for a daemon process (`evolvd run` sets it; it is
process-wide, so the library never does). Both ingest threads are busy at full rate and DuckDB's
client re-takes the GIL between execution tasks: at the default 5 ms each of those waits stalls the
writer (bench/ingest.py). A short interval keeps the hand-offs cheap."""
ADMIN_URL_FILE = "admin.url"
ADMIN_CONNECTION_LIMIT = 64
"""Connections the admin API serves at once (operators, the CLI, Prometheus): a flood gets 503s
instead of exhausting the daemon's file descriptors."""


START_EXTENSION_S = 30.0
"""How much longer than TimeoutStartSec= each progress report asks systemd for (every 10 s)."""


class StartupError(RuntimeError):
    """The daemon could not start; the message is one line an operator can act on."""


class Daemon:
    def __init__(self, config: EvolvdConfig) -> None:
        self.config = config
        self.registry = new_registry()
        self._stop = threading.Event()
        self._started_at = time.time()
        self._broker: EmbeddedBroker | None = None
        self._bootstrap_servers = config.kafka.bootstrap_servers
        self._buffer: DuckDBBuffer | None = None
        self._admin: HttpServer | None = None
        self._ingest: IngestLoop | None = None
        self._ingest_thread: threading.Thread | None = None
        self._ingest_metrics = IngestMetrics.create(self.registry)
        self._ingest_restarts = 0
        self._ingest_last_error: str | None = None
        self._fetcher_pid: int | None = None
        """The Kafka fetcher process of the current ingest loop (`ingest.fetcher: process`)."""
        self._buffer_collector: BufferCollector | None = None
        self._serving: ServingService | None = None
        self._policy_store: PolicyStore | None = None
        self._policy_engine: PolicyEngine | None = None
        self._scheduler: LoopScheduler | None = None
        self._loop: Loop | None = None
        self._demo: DemoWorkload | None = None
        self._clients: dict[str, VLLMClient] = {}
        self._judge = JudgeSource(config.judge)
        self._state = "starting"
        self._systemd = SystemdNotifier()

    # -- lifecycle ---------------------------------------------------------------------------

    def startup(self) -> None:
        cfg = self.config
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create data_dir {cfg.data_dir}: {exc.strerror}") from exc
        token = self._admin_token()
        gateway = cfg.gateway
        if cfg.serving.enabled and gateway.enabled and not gateway.is_loopback and not gateway.api_keys():
            where = (
                f"${gateway.api_keys_env}"
                if gateway.api_keys_env
                else "the variable gateway.api_keys_env names"
            )
            raise StartupError(
                f"gateway.host {gateway.host} is not a loopback address: set client API keys in {where}"
                " (comma-separated), or bind 127.0.0.1"
            )
        from evolvd import embeddings

        try:
            embeddings.configure(cfg.embeddings.model_path)
        except FileNotFoundError as exc:
            raise StartupError(str(exc)) from exc
        if cfg.serving.enabled:  # labeling, evaluation and the gateway run: none should stall on it later
            from evolvd.embeddings import warm_up_in_background

            warm_up_in_background()

        try:
            self._buffer = DuckDBBuffer(cfg.buffer_path, cfg.buffer.threads)
        except (BufferLockedError, SchemaTooNewError) as exc:
            raise StartupError(str(exc)) from exc
        self._buffer_collector = BufferCollector(
            self._buffer.table_counts, self._buffer.backlog, cfg.buffer_path
        )
        self.registry.register(self._buffer_collector)

        self._start_policies()
        self._start_kafka()
        self._ingest = self._new_ingest_loop()

        self._admin = HttpServer(
            create_app(self, token, loopback=cfg.admin.is_loopback),
            cfg.admin.host,
            cfg.admin.port,
            name="evolvd-admin",
            limit_concurrency=ADMIN_CONNECTION_LIMIT,
        )
        try:
            self._admin.start()
        except RuntimeError as exc:
            raise StartupError(str(exc)) from exc
        (cfg.data_dir / ADMIN_URL_FILE).write_text(self._admin.url + "\n")

        self._start_ingest_thread()
        if cfg.serving.enabled:
            self._start_serving()
        self._start_loop()
        if cfg.demo.enabled:
            self._start_demo()
        self._state = "running"
        logger.info(
            "evolvd %s running: admin %s, kafka %s topic %s, buffer %s",
            __version__,
            self._admin.url,
            self._bootstrap_servers,
            cfg.kafka.topic,
            cfg.buffer_path,
        )

    def _admin_token(self) -> str:
        cfg = self.config
        try:
            if configured_token(cfg) is None and not cfg.admin.is_loopback:
                raise StartupError(
                    f"admin.host {cfg.admin.host} is not a loopback address: set a bearer token in "
                    f"${cfg.admin.token_env} or admin.token_file, or bind 127.0.0.1"
                )
            return daemon_token(cfg)
        except AdminTokenError as exc:
            raise StartupError(str(exc)) from exc

    def _start_policies(self) -> None:
        from evolvd.config_file import ConfigError
        from evolvd.embeddings import embed
        from evolvd.policies.engine import PolicyEngine
        from evolvd.policies.store import PolicyStore

        assert self._buffer is not None
        try:
            self._policy_store = PolicyStore(self.config.policies.dir, PolicyMetrics.create(self.registry))
        except ConfigError as exc:
            # Refuse to start on a policy set that does not validate: running on defaults instead
            # would silently drop the operator's gates.
            raise StartupError(
                f"policies rejected: {exc.errors[0]}"
                + (f" (+{len(exc.errors) - 1} more)" if len(exc.errors) > 1 else "")
            ) from exc
        self._policy_engine = PolicyEngine(
            self._buffer,
            self._policy_store,
            self._policy_store.metrics,
            embed,
            heldout_percent=self.config.evaluation.heldout_percent,
        )
        # Reloads go to the same audit trail (the constructor's first load emits no decisions).
        self._policy_store.on_decisions = self._policy_engine.record_decisions

    def _start_demo(self) -> None:
        from evolvd.demo import DemoWorkload

        serving = self._serving
        self._demo = DemoWorkload(
            self.config, self._bootstrap_servers, lambda: serving.gateway_url if serving is not None else None
        )
        self._demo.start()

    def _start_loop(self) -> None:
        """The scheduled jobs: labeling, policies, training, evaluation, promotion, retention."""
        from evolvd.evaluation.evaluator import EvaluationSettings, Evaluator
        from evolvd.loop.promotion import Promoter
        from evolvd.loop.scheduler import LoopScheduler
        from evolvd.loop.steps import Loop

        assert self._policy_store is not None and self._policy_engine is not None and self._buffer is not None
        cfg = self.config
        if cfg.policies.watch:
            self._policy_store.start_watching()
        loop_metrics = LoopMetrics.create(self.registry)
        promoter = None
        if self._serving is not None:
            promoter = Promoter(
                self._buffer,
                self._serving,
                self._policy_engine.current_policies,
                self._policy_engine.record_decisions,
                loop_metrics,
            )
        evaluation = cfg.evaluation
        self._loop = Loop(
            cfg,
            self._buffer,
            self._policy_engine,
            self._serving,
            self._new_labeler() if self._serving is not None and cfg.labeling.enabled else None,
            Evaluator(
                self._buffer,
                EvaluationSettings(
                    evaluation.heldout_percent,
                    evaluation.heldout_max,
                    evaluation.max_tokens,
                    evaluation.concurrency,
                    evaluation.golden_set,
                ),
                loop_metrics,
                self._judge,
            ),
            promoter,
            TrainingMetrics.create(self.registry),
            self._vllm_client,
            self._stop,
        )
        self._scheduler = LoopScheduler(
            cfg.scheduler, cfg.data_dir / "scheduler.sqlite", self._loop.bodies(), self._buffer, loop_metrics
        )
        self._scheduler.start()

    @staticmethod
    def _embed() -> Callable[[Sequence[str]], Any]:
        from evolvd.embeddings import embed

        return embed

    def _vllm_client(self) -> VLLMClient | None:
        """A client for the serving process while it is ready (one per URL: it restarts on a new port)."""
        from evolvd.connectors.vllm_client import VLLMClient

        serving = self._serving
        served = serving.live_model() if serving is not None else None
        if serving is None or served is None:
            return None
        url = served[0]
        if url not in self._clients:
            self._clients[url] = VLLMClient(
                url, timeout_s=self.config.labeling.request_timeout_s, api_key=serving.vllm_api_key
            )
        return self._clients[url]

    def _new_refiner(self, url: str, api_key: str | None) -> SelfRefiner:
        """gateway.self_refine's step, on the serving process at `url` (its client closed at shutdown)."""
        from evolvd.connectors.vllm_client import VLLMClient
        from evolvd.policies.loader import load_policies
        from evolvd.serving.self_refine import SelfRefiner

        client = VLLMClient(url, timeout_s=self.config.gateway.request_timeout_s, api_key=api_key)
        self._clients[f"refine:{url}"] = client
        shipped = load_policies(None)

        def in_force() -> PolicySet:  # serving starts before the policy store: the shipped ones till then
            return self._policy_store.current if self._policy_store is not None else shipped

        return SelfRefiner(client, self._judge, in_force, self.config.gateway.self_refine_max_tokens)

    def _new_labeler(self) -> Labeler:
        from evolvd.labeling.labeler import Labeler
        from evolvd.metrics import LabelMetrics

        assert self._buffer is not None and self._policy_store is not None and self._serving is not None
        serving, store = self._serving, self._policy_store

        def live_model() -> tuple[VLLMClient, str] | None:
            client, served = self._vllm_client(), serving.live_model()
            return None if client is None or served is None else (client, served[1])

        labeling = self.config.labeling
        return Labeler(
            self._buffer,
            lambda: store.current,
            live_model,
            self._embed(),
            LabelMetrics.create(self.registry),
            labeling.batch_size,
            labeling.concurrency,
            self._judge,
            stopping=self._stop.is_set,
        )

    @property
    def scheduler(self) -> LoopScheduler | None:
        return self._scheduler

    @property
    def loop(self) -> Loop | None:
        return self._loop

    def lineage(self, adapter: str) -> Lineage | None:
        from evolvd.loop.lineage import adapter_lineage

        assert self._buffer is not None
        found = adapter_lineage(self._buffer, adapter)
        return None if found is None else Lineage.model_validate(found)

    @property
    def policies(self) -> PolicyEngine | None:
        return self._policy_engine

    def _start_serving(self) -> None:
        from evolvd.serving.service import ServingService

        assert self._buffer is not None
        self._serving = ServingService(
            self.config,
            self._buffer,
            ServingMetrics.create(self.registry),
            self._bootstrap_servers,
            # Under systemd: a start that is still loading the model asks for more time, and says why.
            on_waiting=lambda waiting: self._systemd.extend_start(waiting, START_EXTENSION_S),
            refiner=self._new_refiner,
        )
        try:
            self._serving.start()
        except RuntimeError as exc:  # model bootstrap, vLLM start and gateway bind errors all are
            raise StartupError(f"serving: {exc}") from exc

    @property
    def serving(self) -> ServingService | None:
        return self._serving

    def _start_kafka(self) -> None:
        kafka = self.config.kafka
        if kafka.is_embedded:
            emb = kafka.embedded
            self._broker = EmbeddedBroker(
                emb.port,
                self.config.data_dir / "broker.log",
                emb.startup_timeout_s,
                output_to_stderr=self.config.logging.children == "stderr",
            )
            try:
                self._broker.start()
            except EmbeddedBrokerError as exc:
                raise StartupError(str(exc)) from exc
            self._bootstrap_servers = self._broker.bootstrap_servers
        if kafka.is_embedded or kafka.create_topic:
            try:
                ensure_topic(kafka, self._bootstrap_servers, kafka.embedded.partitions)
            except KafkaUnavailableError as exc:
                raise StartupError(str(exc)) from exc

    def _new_ingest_loop(self) -> IngestLoop:
        assert self._buffer is not None
        buffer, topic = self._buffer, self.config.kafka.topic
        try:
            return IngestLoop(
                lambda drain: self._new_source(drain, lambda: buffer.stored_offsets(topic)),
                buffer,
                self.config.ingest,
                self._ingest_metrics,
                GroupOffsetsCheck(
                    self.config.kafka, self._bootstrap_servers, lambda: buffer.stored_offsets(topic)
                ),
            )
        except KafkaUnavailableError as exc:
            raise StartupError(str(exc)) from exc

    def _new_source(self, drain: Callable[[], None], stored: Callable[[], dict[int, int]]) -> Source:
        cfg = self.config
        source = open_kafka_source(
            cfg.ingest.fetcher,
            cfg.kafka,
            self._bootstrap_servers,
            stored,
            drain,
            cfg.ingest.batch_max_messages,
            cfg.logging.level,
            cfg.logging.format,
        )
        self._fetcher_pid = source.pid if isinstance(source, KafkaProcessSource) else None
        return source

    def _start_ingest_thread(self) -> None:
        assert self._ingest is not None
        self._ingest_thread = threading.Thread(
            target=self._run_ingest, args=(self._ingest,), name="evolvd-ingest", daemon=True
        )
        self._ingest_thread.start()

    def _run_ingest(self, ingest: IngestLoop) -> None:
        """The ingest thread. A failure ends it with its reason recorded; `run` restarts it."""
        try:
            ingest.run(self._stop)
        except Exception as exc:
            self._ingest_last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("ingest failed: %s", self._ingest_last_error)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info("stop requested: finishing the current batch, then shutting down")
            self._state = "stopping"
            self._stop.set()

    def run(self) -> None:
        """Supervise until a stop is requested: a dead ingest thread is restarted with backoff.

        Under systemd (Type=notify) this loop also reports readiness and pings the watchdog, so a
        hung daemon is restarted by the service manager."""
        # The ingest thread has no health signal of its own: a run of a minute without dying counts.
        backoff = RestartBackoff(initial_s=1.0, max_s=60.0, healthy_after_s=60.0)
        self._systemd.ready("started; " + self.readiness()[1])
        shown = ""
        while not self._stop.wait(0.5):
            self._systemd.watchdog()
            if (readiness := self.readiness()[1]) != shown:
                shown = readiness
                self._systemd.status("ready" if readiness == "ok" else readiness)
            thread = self._ingest_thread
            if thread is not None and not thread.is_alive():
                self._ingest_restarts += 1
                self._ingest_metrics.restarts.inc()
                delay = backoff.next_delay()
                logger.error(
                    "ingest stopped unexpectedly; restarting in %.0fs (restart %d)",
                    delay,
                    self._ingest_restarts,
                )
                if self._stop.wait(delay):
                    break
                try:
                    self._ingest = self._new_ingest_loop()
                    self._start_ingest_thread()
                except StartupError as exc:
                    logger.error("ingest restart failed: %s", exc)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self.request_stop()
        self._systemd.stopping()
        if self._demo is not None:
            self._demo.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(timeout_s)
        self._judge.close()
        if self._serving is not None:
            self._serving.stop()
        if self._policy_store is not None:
            self._policy_store.stop()
        if self._ingest_thread is not None:
            self._ingest_thread.join(timeout=timeout_s)
            if self._ingest_thread.is_alive():
                logger.error(
                    "ingest did not stop within %.0fs; exiting anyway (the buffer stays consistent)",
                    timeout_s,
                )
        if self._admin is not None:
            self._admin.stop()
            (self.config.data_dir / ADMIN_URL_FILE).unlink(missing_ok=True)
        if self._buffer_collector is not None:
            self.registry.unregister(self._buffer_collector)
            self._buffer_collector = None
        if self._buffer is not None and not (self._ingest_thread and self._ingest_thread.is_alive()):
            self._buffer.close()
            # Drop every reference to DuckDB objects before interpreter teardown (otherwise its
            # bindings report them as leaked on exit, which reads like a crash in the log).
            self._buffer = None
            self._ingest = None
        if self._broker is not None:
            self._broker.stop()
        self._state = "stopped"
        logger.info("evolvd stopped")

    # -- what the admin API shows ------------------------------------------------------------

    def _loop_status(self) -> dict[str, Any] | None:
        """What the loop did, step by step: jobs, the latest runs, evaluations and decisions."""
        if self._scheduler is None or self._buffer is None:
            return None
        from evolvd.evaluation.store import EvaluationStore
        from evolvd.policies.audit import recent_decisions
        from evolvd.serving.canaries import CanaryStore
        from evolvd.training.runs import RunStore

        runner = self._loop.runner if self._loop is not None else None
        buffer = self._buffer
        return {
            "jobs": self._scheduler.status(),
            "training_now": runner.active() if runner is not None else None,
            "runs": RunStore(buffer).recent(5),
            "evaluations": EvaluationStore(buffer).recent_summaries(5),
            "promotion_decisions": recent_decisions(buffer.cursor(), "promotion", 5),
            "canaries": CanaryStore(buffer).recent(3),
        }

    def readiness(self) -> tuple[bool, str]:
        if self._state != "running":
            return False, self._state
        if self._ingest is None or not self._ingest.state.running:
            return False, "ingest is not running"
        if (stalled := self._ingest.writer_stall.unready_reason()) is not None:
            return False, stalled
        if self._serving is not None and self._serving.live_model() is None:
            return False, "serving is not ready"
        return True, "ok"

    def _writer_status(self) -> dict[str, Any]:
        stall = self._ingest.writer_stall if self._ingest is not None else None
        if stall is None:
            return {"failing_s": 0.0, "attempts": 0, "last_error": None}
        failing_s = round(stall.seconds(), 1)
        return {"failing_s": failing_s, "attempts": stall.attempts, "last_error": stall.last_error}

    def status(self) -> DaemonStatus:
        assert self._buffer is not None
        ingest = self._ingest.state if self._ingest is not None else None
        partitions = [
            PartitionStatus(
                topic=p.topic,
                partition=p.partition,
                buffer_offset=p.position,
                highwater=p.highwater,
                lag=p.lag,
            )
            for p in (ingest.partitions if ingest else [])
        ]
        dead = self._buffer.dead_letters_by_reason()
        # Validated here, where a drifted field is a bug of this daemon, not a KeyError in the CLI.
        return DaemonStatus.model_validate(
            {
                "version": __version__,
                "state": self._state,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self._started_at, 1),
                "kafka": {
                    "bootstrap_servers": self._bootstrap_servers,
                    "embedded": self.config.kafka.is_embedded,
                    "topic": self.config.kafka.topic,
                    "group_id": self.config.kafka.group_id,
                },
                "ingest": {
                    "running": bool(ingest and ingest.running),
                    "paused_by_backpressure": bool(ingest and ingest.paused),
                    "backlog": ingest.backlog if ingest else None,
                    "backlog_high_watermark": self.config.ingest.backlog_high_watermark,
                    "restarts": self._ingest_restarts,
                    "last_error": self._ingest_last_error,
                    "writer": self._writer_status(),
                    "fetcher_pid": self._fetcher_pid,
                    "lag_total": sum(p.lag or 0 for p in partitions),
                    "partitions": partitions,
                    "group_ahead": [asdict(a) for a in (ingest.group_ahead if ingest else [])],
                },
                "buffer": {
                    "path": str(self.config.buffer_path),
                    "schema_version": self._buffer.schema_version,
                    "tables": self._buffer.table_counts(),
                    "events_by_state": self._buffer.events_by_state(),
                },
                "dead_letters": {"total": sum(dead.values()), "by_reason": dead},
                "serving": self._serving.status() if self._serving is not None else {"state": "disabled"},
                "policies": self._policy_engine.status() if self._policy_engine is not None else None,
                "loop": self._loop_status(),
                "config": as_dict(self.config),
            }
        )


def data_dir_admin_url(data_dir: Path) -> str | None:
    """The admin URL a running daemon wrote into its data_dir, if any."""
    try:
        return (data_dir / ADMIN_URL_FILE).read_text().strip() or None
    except OSError:
        return None
