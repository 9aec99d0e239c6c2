"""The daemon's composition: every part built whole, then started in order, supervised, and stopped in
reverse (evolvd.parts).

Building fails with StartupError and a one-line reason (the CLI turns it into its own exit code), and so
does a part that cannot start; what was opened or started by then is released. A part that fails later
restarts on its own with backoff (ingest, the vLLM process) while the rest keeps running on its last
good state.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evolvd import __version__
from evolvd.abc import IngestSink, Source
from evolvd.admin import create_app
from evolvd.admin_token import AdminTokenError, configured_token, daemon_token
from evolvd.buffer import Buffer, BufferLockedError, SchemaTooNewError
from evolvd.buffer.part import BufferPart
from evolvd.buffer.postgres_buffer import BufferUnavailableError
from evolvd.config import EvolvdConfig, as_dict
from evolvd.connectors.group_offsets import GroupOffsetsCheck
from evolvd.connectors.kafka_process import KafkaProcessSource, open_kafka_source
from evolvd.connectors.kafka_source import KafkaUnavailableError
from evolvd.http_server import HttpServer
from evolvd.ingest import IngestLoop
from evolvd.ingest_service import IngestService, IngestStartError
from evolvd.judge import JudgeSource
from evolvd.kafka_log import KafkaLog
from evolvd.metrics import (
    GatewayMemberMetrics,
    IngestMetrics,
    LoopMetrics,
    PolicyMetrics,
    ServingMetrics,
    TrainingMetrics,
    new_registry,
)
from evolvd.parts import Part, PartStack, StatusPart, joined_status
from evolvd.policies.service import PolicyService
from evolvd.status_models import DaemonStatus, Lineage
from evolvd.systemd import SystemdNotifier

if TYPE_CHECKING:
    from evolvd.buffer.leadership import Fence
    from evolvd.connectors.vllm_client import VLLMClient
    from evolvd.demo import DemoWorkload
    from evolvd.labeling.labeler import Labeler
    from evolvd.labeling.worker import LabelWorker
    from evolvd.loop.scheduler import LoopScheduler
    from evolvd.loop.service import CampaignFactory, LoopService
    from evolvd.loop.steps import Loop
    from evolvd.policies.engine import PolicyEngine
    from evolvd.policies.store import PolicyStore
    from evolvd.serving.gateway_member import GatewayMember
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


class AdminEndpoint:
    """The admin API's HTTP server, and the file in data_dir that tells the CLI where it listens."""

    name = "admin"

    def __init__(self, server: HttpServer, url_file: Path) -> None:
        self._server = server
        self._url_file = url_file

    @property
    def url(self) -> str:
        return self._server.url

    def start(self) -> None:
        self._server.start()
        self._url_file.write_text(self._server.url + "\n")

    def stop(self) -> None:
        self._server.stop()
        self._url_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class DaemonParts:
    """Every part, built. A part is absent only where the config turns it off (serving, the demo) or
    the daemon's role does not run it: an ingest member runs Kafka and ingest only, a labeler the
    policy files and its labeling worker, a gateway member its gateway only, the whole daemon
    everything but those members' parts."""

    buffer: BufferPart
    admin: AdminEndpoint
    kafka: KafkaLog | None = None
    ingest: IngestService | None = None
    policies: PolicyService | None = None
    serving: ServingService | None = None
    loop: LoopService | None = None
    labeler: LabelWorker | None = None
    demo: DemoWorkload | None = None
    gateway: GatewayMember | None = None

    def in_start_order(self) -> list[Part]:
        """The admin API before serving, so operators and systemd can ask while vLLM loads; the loop's
        jobs after everything they use; the demo's traffic last."""
        ordered: list[Part | None] = [self.buffer, self.policies, self.kafka, self.ingest, self.admin]
        ordered += [self.gateway, self.serving, self.loop, self.labeler, self.demo]
        return [part for part in ordered if part is not None]

    def with_status(self) -> list[StatusPart]:
        parts: list[StatusPart | None] = [self.kafka, self.ingest, self.labeler, self.buffer, self.serving]
        parts += [self.policies, self.loop, self.gateway]
        return [part for part in parts if part is not None]


class Daemon:
    """Built whole by the constructor (the buffer open, the policies loaded, every part constructed),
    started by startup(), supervised by run(), stopped in reverse by shutdown()."""

    def __init__(self, config: EvolvdConfig) -> None:
        """Raises StartupError when a part cannot be built; what was opened by then is closed."""
        self.config = config
        self.registry = new_registry()
        self._stop = threading.Event()
        self._started_at = time.time()
        self._state = "starting"
        self._systemd = SystemdNotifier()
        self._clients: dict[str, VLLMClient] = {}
        self._fetcher_pid: int | None = None
        """The Kafka fetcher process of the current ingest loop (`ingest.fetcher: process`)."""
        self._stack = PartStack()
        self._judge = JudgeSource(config.judge)
        self._stack.on_close("judge", self._judge.close)
        try:
            self.parts = self._build()
        except BaseException:
            self._stack.close()
            raise

    # -- building ------------------------------------------------------------------------------

    def _build(self) -> DaemonParts:
        cfg = self.config
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create data_dir {cfg.data_dir}: {exc.strerror}") from exc
        token = self._admin_token()
        self._check_gateway_exposure()
        from evolvd import embeddings

        try:
            embeddings.configure(cfg.embeddings.model_path)
        except FileNotFoundError as exc:
            raise StartupError(str(exc)) from exc
        if cfg.role == "loop" and cfg.buffer.backend != "postgres":
            raise StartupError(
                "--role loop campaigns to lead the loop of a shared buffer: set buffer.backend postgres"
                " (a daemon on a DuckDB file runs its own loop as role all)"
            )
        try:
            buffer = BufferPart(cfg, self.registry)
        except (BufferLockedError, BufferUnavailableError, SchemaTooNewError) as exc:
            raise StartupError(str(exc)) from exc
        self._stack.on_close("the buffer", buffer.close)
        admin = AdminEndpoint(
            HttpServer(
                create_app(self, token, loopback=cfg.admin.is_loopback),
                cfg.admin.host,
                cfg.admin.port,
                name="evolvd-admin",
                limit_concurrency=ADMIN_CONNECTION_LIMIT,
            ),
            cfg.data_dir / ADMIN_URL_FILE,
        )
        if cfg.role == "gateway":
            return DaemonParts(buffer=buffer, admin=admin, gateway=self._build_gateway_member(buffer.buffer))
        if cfg.role == "label":
            policies = PolicyService(self._policy_store(), None, watch=cfg.policies.watch)
            return DaemonParts(
                buffer=buffer,
                admin=admin,
                policies=policies,
                labeler=self._build_label_worker(buffer, policies),
            )
        kafka = KafkaLog(cfg)
        ingest = None if cfg.role == "loop" else self._build_ingest(buffer, kafka)
        if cfg.role == "ingest":
            return DaemonParts(buffer=buffer, kafka=kafka, ingest=ingest, admin=admin)
        from evolvd.buffer.leadership import Fence

        # The loop's term: the decisions of its jobs carry it (one loop member leads a shared buffer).
        fence = Fence(shared=True) if cfg.buffer.backend == "postgres" else Fence.sole()
        policies, engine = self._build_policies(buffer.buffer, fence)
        serving = (
            self._build_serving(buffer.buffer, kafka.bootstrap_servers, policies, fence)
            if cfg.serving.enabled
            else None
        )
        parts = DaemonParts(
            buffer=buffer,
            kafka=kafka,
            ingest=ingest,
            admin=admin,
            policies=policies,
            serving=serving,
            loop=self._build_loop(buffer.buffer, policies, engine, serving, fence),
            demo=self._build_demo(kafka.bootstrap_servers, serving)
            if cfg.demo.enabled and cfg.role == "all"
            else None,
        )
        if cfg.serving.enabled:  # labeling, evaluation and the gateway: none should stall on it later
            embeddings.load_at_startup()
        return parts

    def _build_ingest(self, buffer: BufferPart, kafka: KafkaLog) -> IngestService:
        metrics = IngestMetrics.create(self.registry)
        ingest = IngestService(
            lambda: self._new_ingest_loop(buffer.sink, kafka.bootstrap_servers, metrics),
            self.config.ingest,
            metrics,
            self._stop,
            lambda: self._fetcher_pid,
        )
        buffer.keep_open_while(lambda: ingest.alive)
        return ingest

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

    def _check_gateway_exposure(self) -> None:
        cfg = self.config
        gateway = cfg.gateway
        serves = cfg.role == "gateway" or (cfg.serving.enabled and gateway.enabled)
        if serves and not gateway.is_loopback and not gateway.api_keys():
            where = (
                f"${gateway.api_keys_env}"
                if gateway.api_keys_env
                else "the variable gateway.api_keys_env names"
            )
            raise StartupError(
                f"gateway.host {gateway.host} is not a loopback address: set client API keys in {where}"
                " (comma-separated), or bind 127.0.0.1"
            )

    def _policy_store(self) -> PolicyStore:
        from evolvd.config_file import ConfigError
        from evolvd.policies.store import PolicyStore

        try:
            return PolicyStore(self.config.policies.dir, PolicyMetrics.create(self.registry))
        except ConfigError as exc:
            # Refuse to start on a policy set that does not validate: running on defaults instead
            # would silently drop the operator's gates.
            raise StartupError(
                f"policies rejected: {exc.errors[0]}"
                + (f" (+{len(exc.errors) - 1} more)" if len(exc.errors) > 1 else "")
            ) from exc

    def _build_policies(self, buffer: Buffer, fence: Fence) -> tuple[PolicyService, PolicyEngine]:
        from evolvd.embeddings import embed
        from evolvd.policies.engine import PolicyEngine

        store = self._policy_store()
        engine = PolicyEngine(
            buffer,
            store,
            store.metrics,
            embed,
            heldout_percent=self.config.evaluation.heldout_percent,
            fence=fence,
        )
        # Reloads go to the same audit trail (the constructor's first load emits no decisions).
        store.on_decisions = engine.record_decisions
        return PolicyService(store, engine, watch=self.config.policies.watch), engine

    def _build_gateway_member(self, buffer: Buffer) -> GatewayMember:
        """`--role gateway`: the gateway alone, routing as the shared buffer says, in front of serving.url."""
        from evolvd.serving.gateway_member import GatewayMember

        cfg = self.config
        if cfg.buffer.backend != "postgres":
            raise StartupError(
                "--role gateway routes as the shared buffer says: set buffer.backend postgres (the buffer"
                " the daemon that swaps adapters writes)"
            )
        if cfg.serving.mode != "external" or cfg.serving.url is None:
            raise StartupError(
                "--role gateway proxies to serving.url: set serving.mode external and serving.url"
                " (vllm-router in front of the replicas, or one vLLM server)"
            )
        if cfg.gateway.self_refine:
            raise StartupError(
                "gateway.self_refine runs on the daemon's own gateway (it needs the judge and the policies);"
                " a gateway member does not refine: turn it off in the member's config"
            )
        if cfg.gateway.capture and cfg.kafka.embedded:
            raise StartupError(
                "gateway.capture on a gateway member publishes to the prompts topic of a real cluster:"
                " set kafka.bootstrap_servers (a member starts no broker of its own)"
            )
        return GatewayMember(
            cfg,
            buffer,
            ServingMetrics.create(self.registry),
            GatewayMemberMetrics.create(self.registry),
            os.environ.get(cfg.serving.api_key_env) or None,
        )

    def _build_label_worker(self, buffer: BufferPart, policies: PolicyService) -> LabelWorker:
        """`--role label`: claims from the shared buffer, labels with the model at serving.url."""
        from evolvd.connectors.vllm_client import VLLMClient
        from evolvd.labeling.worker import LabelWorker, ServedModel

        cfg = self.config
        if cfg.serving.mode != "external" or cfg.serving.url is None:
            raise StartupError(
                "--role label labels with the model at serving.url: set serving.mode external and"
                " serving.url (a vLLM server, or a router in front of several)"
            )
        key = os.environ.get(cfg.serving.api_key_env) or None
        client = VLLMClient(cfg.serving.url, timeout_s=cfg.labeling.request_timeout_s, api_key=key)
        self._stack.on_close("the model client", client.close)
        served = ServedModel(client, cfg.labeling.model)
        claimant = f"{socket.gethostname()}-{os.getpid()}"
        labeler = self._labeler(buffer.buffer, policies, served.live, claimant)
        return LabelWorker(labeler, claimant, lambda: served.name, cfg.labeling.idle_wait_s, self._stop)

    def _build_demo(self, bootstrap_servers: str, serving: ServingService | None) -> DemoWorkload:
        from evolvd.demo import DemoWorkload

        return DemoWorkload(
            self.config, bootstrap_servers, lambda: serving.gateway_url if serving is not None else None
        )

    def _build_loop(
        self,
        buffer: Buffer,
        policies: PolicyService,
        engine: PolicyEngine,
        serving: ServingService | None,
        fence: Fence,
    ) -> LoopService:
        """The scheduled jobs: labeling, policies, training, evaluation, promotion, retention."""
        from evolvd.evaluation.evaluator import EvaluationSettings, Evaluator
        from evolvd.loop.promotion import Promoter
        from evolvd.loop.scheduler import LoopScheduler, job_store_url
        from evolvd.loop.service import LoopService
        from evolvd.loop.steps import Loop

        cfg = self.config
        loop_metrics = LoopMetrics.create(self.registry)
        shared = cfg.buffer.backend == "postgres"
        promoter = None
        if serving is not None:
            promoter = Promoter(
                buffer,
                serving,
                engine.current_policies,
                engine.record_loop_decisions,
                loop_metrics,
            )
        evaluation = cfg.evaluation
        loop = Loop(
            cfg,
            buffer,
            engine,
            serving,
            self._build_labeler(buffer, policies, serving)
            if serving is not None and cfg.labeling.enabled
            else None,
            Evaluator(
                buffer,
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
        store = job_store_url(cfg)
        return LoopService(
            loop,
            lambda: LoopScheduler(cfg.scheduler, store, loop.bodies(), buffer, loop_metrics),
            buffer,
            self._campaign(fence) if shared else None,
            # A new leader serves what the registry says is live and publishes it for the gateways.
            on_elected=serving.lead if serving is not None and shared else None,
        )

    def _campaign(self, fence: Fence) -> CampaignFactory:
        """This member's campaign to lead the loop on the shared buffer."""
        from evolvd.buffer.leadership import Campaign

        cfg = self.config
        url = cfg.buffer.postgres_url
        assert url is not None
        holder = f"{socket.gethostname()}-{os.getpid()}"

        def campaign(on_elected: Callable[[int], None], on_deposed: Callable[[str], None]) -> Campaign:
            return Campaign(
                url,
                holder,
                fence,
                on_elected,
                on_deposed,
                cfg.scheduler.leader_check_s,
                cfg.buffer.connect_timeout_s,
            )

        return campaign

    @staticmethod
    def _embed() -> Callable[[Sequence[str]], Any]:
        from evolvd.embeddings import embed

        return embed

    def _vllm_client(self) -> VLLMClient | None:
        """A client for the serving process while it is ready (one per URL: it restarts on a new port)."""
        from evolvd.connectors.vllm_client import VLLMClient

        serving = self.parts.serving
        served = serving.live_model() if serving is not None else None
        if serving is None or served is None:
            return None
        url = served[0]
        if url not in self._clients:
            self._clients[url] = VLLMClient(
                url, timeout_s=self.config.labeling.request_timeout_s, api_key=serving.vllm_api_key
            )
        return self._clients[url]

    def _build_refiner(self, policies: PolicyService) -> Callable[[str, str | None], SelfRefiner]:
        """gateway.self_refine's step, built for the serving process at `url` once it runs."""

        def refiner(url: str, api_key: str | None) -> SelfRefiner:
            from evolvd.connectors.vllm_client import VLLMClient
            from evolvd.serving.self_refine import SelfRefiner

            client = VLLMClient(url, timeout_s=self.config.gateway.request_timeout_s, api_key=api_key)
            self._clients[f"refine:{url}"] = client
            store = policies.store
            return SelfRefiner(
                client, self._judge, lambda: store.current, self.config.gateway.self_refine_max_tokens
            )

        return refiner

    def _build_labeler(self, buffer: Buffer, policies: PolicyService, serving: ServingService) -> Labeler:
        """The whole daemon's labeler: the live model of its own serving, and the only labeler of its file."""

        def live_model() -> tuple[VLLMClient, str] | None:
            client, served = self._vllm_client(), serving.live_model()
            return None if client is None or served is None else (client, served[1])

        return self._labeler(buffer, policies, live_model, "evolvd")

    def _labeler(
        self,
        buffer: Buffer,
        policies: PolicyService,
        model: Callable[[], tuple[VLLMClient, str] | None],
        claimant: str,
    ) -> Labeler:
        from evolvd.labeling.labeler import Labeler
        from evolvd.metrics import LabelMetrics

        store, labeling = policies.store, self.config.labeling
        return Labeler(
            buffer,
            lambda: store.current,
            model,
            self._embed(),
            LabelMetrics.create(self.registry),
            labeling.batch_size,
            labeling.concurrency,
            self._judge,
            stopping=self._stop.is_set,
            claimant=claimant,
            lease_s=labeling.lease_s,
        )

    def _build_serving(
        self, buffer: Buffer, bootstrap_servers: str, policies: PolicyService, fence: Fence
    ) -> ServingService:
        from evolvd.serving.service import ServingService

        return ServingService(
            self.config,
            buffer,
            ServingMetrics.create(self.registry),
            bootstrap_servers,
            # Under systemd: a start that is still loading the model asks for more time, and says why.
            on_waiting=lambda waiting: self._systemd.extend_start(waiting, START_EXTENSION_S),
            refiner=self._build_refiner(policies),
            fence=fence,
        )

    def _new_ingest_loop(
        self, buffer: IngestSink, bootstrap_servers: str, metrics: IngestMetrics
    ) -> IngestLoop:
        topic = self.config.kafka.topic

        def stored() -> dict[int, int]:
            return buffer.stored_offsets(topic)

        try:
            return IngestLoop(
                lambda drain: self._new_source(drain, stored, bootstrap_servers),
                buffer,
                self.config.ingest,
                metrics,
                GroupOffsetsCheck(self.config.kafka, bootstrap_servers, stored),
            )
        except KafkaUnavailableError as exc:
            raise IngestStartError(str(exc)) from exc

    def _new_source(
        self, drain: Callable[[], None], stored: Callable[[], dict[int, int]], bootstrap_servers: str
    ) -> Source:
        cfg = self.config
        source = open_kafka_source(
            cfg.ingest.fetcher,
            cfg.kafka,
            bootstrap_servers,
            stored,
            drain,
            cfg.ingest.batch_max_messages,
            cfg.logging.level,
            cfg.logging.format,
        )
        self._fetcher_pid = source.pid if isinstance(source, KafkaProcessSource) else None
        return source

    # -- lifecycle -----------------------------------------------------------------------------

    def startup(self) -> None:
        """Start the parts in order; the first that cannot start fails the startup (shutdown() then
        stops what did start)."""
        for part in self.parts.in_start_order():
            try:
                self._stack.start(part)
            except RuntimeError as exc:  # bind errors, an unreachable broker, vLLM that will not start
                raise StartupError(f"{part.name}: {exc}") from exc
        self._state = "running"
        logger.info(
            "evolvd %s running (role %s): admin %s, kafka %s topic %s, buffer %s",
            __version__,
            self.config.role,
            self.parts.admin.url,
            self.parts.kafka.bootstrap_servers if self.parts.kafka is not None else "-",
            self.config.kafka.topic,
            self.parts.buffer.location,
        )

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info("stop requested: finishing the current batch, then shutting down")
            self._state = "stopping"
            self._stop.set()

    def run(self) -> None:
        """Wait for a stop request. The parts supervise themselves (ingest and the vLLM process restart
        with backoff); under systemd (Type=notify) this loop reports readiness and pings the watchdog,
        so a hung daemon is restarted by the service manager."""
        self._systemd.ready("started; " + self.readiness()[1])
        shown = ""
        while not self._stop.wait(0.5):
            self._systemd.watchdog()
            if (readiness := self.readiness()[1]) != shown:
                shown = readiness
                self._systemd.status("ready" if readiness == "ok" else readiness)

    def shutdown(self) -> None:
        """Stop the started parts in reverse order, then close the buffer file."""
        self.request_stop()
        self._systemd.stopping()
        self._stack.close()
        self._state = "stopped"
        logger.info("evolvd stopped")

    # -- what the admin API shows ------------------------------------------------------------

    @property
    def scheduler(self) -> LoopScheduler | None:
        loop = self.parts.loop
        return loop.scheduler if loop is not None else None

    def no_scheduler_reason(self) -> str:
        loop = self.parts.loop
        if loop is None:
            return f"this daemon runs no loop (it is a `{self.config.role}` member)"
        return loop.standby_reason() or "the loop's scheduler is starting"

    @property
    def loop(self) -> Loop | None:
        loop = self.parts.loop
        return loop.loop if loop is not None else None

    @property
    def policies(self) -> PolicyEngine | None:
        policies = self.parts.policies
        return policies.engine if policies is not None else None

    @property
    def serving(self) -> ServingService | None:
        return self.parts.serving

    def lineage(self, adapter: str) -> Lineage | None:
        from evolvd.loop.lineage import adapter_lineage

        found = adapter_lineage(self.parts.buffer.buffer, adapter)
        return None if found is None else Lineage.model_validate(found)

    def readiness(self) -> tuple[bool, str]:
        if self._state != "running":
            return False, self._state
        ingest = self.parts.ingest
        if ingest is not None and (unready := ingest.unready_reason()) is not None:
            return False, unready
        serving = self.parts.serving
        if serving is not None and serving.live_model() is None:
            return False, "serving is not ready"
        gateway = self.parts.gateway
        if gateway is not None and (unready := gateway.unready_reason()) is not None:
            return False, unready
        return True, "ok"

    def status(self) -> DaemonStatus:
        """The daemon's own fields joined with every part's sections."""
        sections = joined_status(self.parts.with_status())
        sections.setdefault("serving", {"state": "disabled"})
        # Validated here, where a drifted field is a bug of this daemon, not a KeyError in the CLI.
        return DaemonStatus.model_validate(
            {
                "version": __version__,
                "state": self._state,
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self._started_at, 1),
                **sections,
                "config": as_dict(self.config),
            }
        )


def data_dir_admin_url(data_dir: Path) -> str | None:
    """The admin URL a running daemon wrote into its data_dir, if any."""
    try:
        return (data_dir / ADMIN_URL_FILE).read_text().strip() or None
    except OSError:
        return None
