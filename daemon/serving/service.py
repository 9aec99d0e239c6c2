"""Serving as one part of the daemon: base model, supervised vLLM, router, hot-swapper and gateway."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evolvd.abc import Publisher
from evolvd.adapter_folder import AdapterRejectedError
from evolvd.buffer import Buffer
from evolvd.buffer.keys import CAPTURE_SEAL_KEY, buffer_key
from evolvd.buffer.leadership import Fence
from evolvd.config import EvolvdConfig
from evolvd.connectors.kafka_publisher import KafkaPublisher
from evolvd.connectors.model_bootstrap import BaseModel, resolve_base_model
from evolvd.http_server import HttpServer
from evolvd.metrics import ServingMetrics
from evolvd.secret_file import SecretFileError
from evolvd.serving.adapter_store import AdapterStore, check_import_path
from evolvd.serving.fleet import ReplicaFleet
from evolvd.serving.gateway import GATEWAY_URL_FILE, Gateway
from evolvd.serving.hotswap import AdapterEndpoints, HotSwapper, SwapError, SwapResult
from evolvd.serving.registry import AdapterRegistry, AdapterRow, AdapterStatus
from evolvd.serving.routing import Router, Routing, RoutingNotPublishedError
from evolvd.serving.routing_table import RoutingTable
from evolvd.serving.self_refine import SelfRefiner
from evolvd.serving.served_log import ServedLog
from evolvd.serving.served_stats import ServedStats, WindowStats
from evolvd.serving.supervisor import ServingStartError, ServingSupervisor
from evolvd.serving.vllm_key import vllm_api_key
from evolvd.status_models import BaseModelStatus, ServingStatus

__all__ = ["ServingNotStartedError", "ServingService", "SwapError", "SwapResult"]
"""The facade the loop and the admin API use; the swapper, router and supervisor stay inside serving."""

logger = logging.getLogger("evolvd.serving")

GATED_OUT = frozenset({AdapterStatus.REJECTED, AdapterStatus.ROLLED_BACK})
"""Adapter statuses a gate or a canary decided against: an operator's promote of one must be forced."""


def manual_promote_reason(name: str, row: AdapterRow | None, force: bool) -> str:
    """The swap log's reason for an operator's promote of `name`; SwapError when it needs `force`."""
    if row is None or row.status not in GATED_OUT:
        return "manual promote (admin API)"
    if not force:
        raise SwapError(
            f"{name} was {row.status} ({row.reason}); promoting it skips every gate: "
            "promote with force (evolvd adapters promote --force) to do it anyway"
        )
    reason = f"FORCED manual promote of a {row.status} adapter (admin API), overriding: {row.reason}"
    logger.warning("%s: %s", name, reason)
    return reason


class ServingNotStartedError(RuntimeError):
    """Asked of serving before its parts exist: while the daemon prepares the base model (minutes on a
    first start, when the bundled model is converted) or after a failed start. The admin API answers 503."""


@dataclass(frozen=True)
class StartedParts:
    """What `ServingService.start` builds, all at once: nothing reads one part before the others exist."""

    base: BaseModel
    router: Router
    supervisor: ServingSupervisor
    swapper: HotSwapper


class ServingService:
    name = "serving"

    def __init__(
        self,
        config: EvolvdConfig,
        buffer: Buffer,
        metrics: ServingMetrics,
        bootstrap_servers: str,
        on_waiting: Callable[[str], None] | None = None,
        refiner: Callable[[str, str | None], SelfRefiner] | None = None,
        fence: Fence | None = None,
    ) -> None:
        """`on_waiting`: told what the start waits for while vLLM loads (the daemon tells systemd).
        `refiner`: builds gateway.self_refine's step for the serving process's URL and API key.
        `fence`: the loop's term on a shared buffer: only the leading member publishes its routing."""
        self._routing_table = RoutingTable(buffer, fence)
        self._refiner = refiner
        self.config = config
        self._on_waiting = on_waiting
        self.metrics = metrics
        self.registry = AdapterRegistry(buffer)
        self._buffer = buffer
        self._bootstrap_servers = bootstrap_servers
        self._parts: StartedParts | None = None
        self._gateway: HttpServer | None = None
        self._capture: Publisher | None = None
        self._fleet: ReplicaFleet | None = None
        self.served_stats = ServedStats()
        """Gateway outcomes per served model (what a canary is judged on)."""

    def start(self) -> None:
        cfg = self.config
        base = resolve_base_model(cfg.serving.model_path, cfg.data_dir / "models")
        try:
            api_key = vllm_api_key(cfg)
        except SecretFileError as exc:
            raise ServingStartError(f"vLLM API key: {exc}") from exc
        # Every flip is written to the buffer before it takes effect: gateway members route by it.
        router = Router(base.name, cfg.gateway.public_model_name, publish=self._publish)
        cfg.adapter_import_root.mkdir(parents=True, exist_ok=True)  # where operators put adapters to register
        supervisor = ServingSupervisor(
            cfg.serving,
            cfg.data_dir / "serving",
            base.path,
            base.name,
            api_key=api_key,
            on_restart=self._on_serving_down,
            on_waiting=self._on_waiting,
            output_to_stderr=cfg.logging.children == "stderr",
        )
        endpoints: AdapterEndpoints = supervisor.client
        if cfg.serving.adapter_dir is not None:
            replicas = cfg.serving.replica_urls or [supervisor.url]
            endpoints = self._fleet = ReplicaFleet(replicas, cfg.serving.adapter_dir, api_key)
            logger.info("serving adapters from %s on %d replica(s)", cfg.serving.adapter_dir, len(replicas))
        swapper = HotSwapper(
            endpoints,
            router,
            self.registry,
            AdapterStore(cfg.adapter_store_dir),
            self.metrics,
            base.path,
            cfg.serving.max_lora_rank,
            cfg.serving.probe_prompt,
        )
        self._parts = StartedParts(base, router, supervisor, swapper)
        supervisor.add_ready_callback(self._on_serving_back)
        supervisor.start()
        self.metrics.up.set(1)
        self._restore_live_adapter()
        self._publish_routing()
        if cfg.gateway.enabled:
            self._start_gateway()

    def _started(self) -> StartedParts:
        if self._parts is None:
            raise ServingNotStartedError("serving is not started yet (the base model is being prepared)")
        return self._parts

    def _restore_live_adapter(self) -> None:
        """After a daemon restart, the adapter the registry says is live goes live again."""
        swapper = self._started().swapper
        live = self.registry.live()
        if live is not None:  # its row stays `live` while it loads: a crash now loses nothing
            try:
                swapper.restore(live, self.registry.previous_live())
            except Exception:
                logger.exception("could not restore live adapter %s; serving the base model", live)

    def _publish(self, routing: Routing) -> None:
        if self._routing_table.writable:  # a standby loop member's routing is its own gateway's only
            generation = self._routing_table.publish(routing)
            logger.debug("routing generation %d published: %s", generation, routing)

    def lead(self) -> None:
        """This member was elected to lead the loop on a shared buffer: it serves what the registry
        says is live (its routing may be older than the last leader's swaps) and publishes that for
        the gateway members."""
        if self._parts is None:
            return  # serving's own start restores and publishes
        routing = self._parts.router.routing
        if (routing.live, routing.previous) != (self.registry.live(), self.registry.previous_live()):
            self._restore_live_adapter()
        self._publish_routing()

    def _publish_routing(self) -> None:
        """What serves at start (the base model, or the live adapter restored), for gateway members."""
        try:
            self._started().router.update()
        except RoutingNotPublishedError as exc:
            logger.error("%s; gateway members keep the routing they last read", exc)

    def _start_gateway(self) -> None:
        cfg = self.config
        parts = self._started()
        if cfg.gateway.capture:
            self._capture = KafkaPublisher(cfg.kafka, self._bootstrap_servers, cfg.kafka.topic)
        swapper, supervisor = parts.swapper, parts.supervisor
        app = Gateway(
            config=cfg.gateway,
            router=parts.router,
            upstream_url=supervisor.url,
            upstream_api_key=self.vllm_api_key,
            is_ready=supervisor.is_ready,
            loaded_adapters=lambda: sorted(swapper.loaded),
            metrics=self.metrics,
            api_keys=set(cfg.gateway.api_keys()),
            capture=self._capture,
            served_stats=self.served_stats,
            seal_key=buffer_key(self._buffer.cursor(), CAPTURE_SEAL_KEY),
            refiner=self._refiner(supervisor.url, self.vllm_api_key)
            if self._refiner is not None and cfg.gateway.self_refine
            else None,
        ).app()
        self._gateway = HttpServer(app, cfg.gateway.host, cfg.gateway.port, name="evolvd-gateway")
        self._gateway.start()
        (cfg.data_dir / GATEWAY_URL_FILE).write_text(self._gateway.url + "\n")
        logger.info("gateway serving %r at %s/v1", cfg.gateway.public_model_name, self._gateway.url)

    def _on_serving_down(self) -> None:
        self.metrics.up.set(0)
        self.metrics.restarts.inc()

    def _on_serving_back(self) -> None:
        self.metrics.up.set(1)
        if self._parts is not None:
            self._parts.swapper.reapply()

    def stop(self) -> None:
        if self._gateway is not None:
            self._gateway.stop()
            (self.config.data_dir / GATEWAY_URL_FILE).unlink(missing_ok=True)
        if self._capture is not None:
            self._capture.close(timeout_s=10)
        if self._parts is not None:
            self._parts.supervisor.stop()
        if self._fleet is not None:
            self._fleet.close()
        self.metrics.up.set(0)

    # -- for the loop --------------------------------------------------------------------------
    # The loop's jobs change serving only through these: they keep the swapper, router and registry
    # in step (a status row never says one thing while the router does another).

    def started_base(self) -> BaseModel:
        """The base model serving resolved at start (the one adapters are trained on)."""
        return self._started().base

    def serving_name(self) -> str:
        """What the public model resolves to now: the live adapter, or the base model's name."""
        return self._started().router.routing.live_or_base

    def canary_name(self) -> str | None:
        return self._parts.router.routing.canary if self._parts is not None else None

    def resident(self) -> set[str]:
        """Adapters something routes to (live, previous, canary): never deleted."""
        return self._parts.router.routing.resident() if self._parts is not None else set()

    def register_trained(self, path: Path, parent: str | None, run_id: str) -> str:
        """A training run's adapter, registered as a candidate (SwapError: refused, with the reason)."""
        return self._started().swapper.register(path, parent=parent, run_id=run_id)

    def begin_evaluation(self, name: str, against: str) -> None:
        """Mark a candidate `evaluating` and load it so the evaluation can query it by name (SwapError:
        it failed its load or probe, and is recorded rejected)."""
        self.registry.set_status(name, AdapterStatus.EVALUATING, f"evaluating against {against}")
        self._started().swapper.load_for_evaluation(name)

    def evaluation_failed(self, name: str) -> None:
        self.registry.set_status(name, AdapterStatus.CANDIDATE, "evaluation failed; retried on the next run")

    def reject(self, name: str, reason: str) -> None:
        """The promotion policy rejected a candidate: recorded, and its adapter slot freed."""
        self.registry.set_status(name, AdapterStatus.REJECTED, reason)
        self._started().swapper.release(name)

    def promote_by_policy(self, name: str, reason: str) -> SwapResult:
        return self._started().swapper.promote(name, reason)

    def canary_by_policy(self, name: str, share: float, reason: str) -> SwapResult:
        return self._started().swapper.start_canary(name, share, reason)

    def roll_back_canary(self, name: str, reason: str) -> None:
        """A canary that regressed: its traffic back to live, the adapter recorded `rolled_back`."""
        self._started().swapper.stop_canary(f"canary regressed: {reason}")
        self.registry.set_status(name, AdapterStatus.ROLLED_BACK, f"canary regressed: {reason}")
        self.metrics.rollbacks.labels("ok").inc()

    def window_stats(self, name: str, since: float) -> WindowStats:
        """Requests, errors and latencies served with `name` since `since` (epoch s): by this daemon's
        gateway, and by the gateway members that wrote theirs to the buffer."""
        members = ServedLog(self._buffer).since(name, since)
        return WindowStats.of(self.served_stats.outcomes_since(name, since) + members)

    # -- for the admin API ---------------------------------------------------------------------

    @property
    def vllm_api_key(self) -> str | None:
        """The vLLM server's API key (evolvd.serving.vllm_key), once started."""
        return self._parts.supervisor.api_key if self._parts is not None else None

    @property
    def gateway_url(self) -> str | None:
        return self._gateway.url if self._gateway is not None else None

    def register(self, path: Path, evaluate: bool = False) -> str:
        """An operator's registration: only of a folder under serving.adapter_import_root. `evaluate`:
        through the loop's evaluation and promotion policy, like a trained candidate."""
        swapper = self._started().swapper
        try:
            check_import_path(path, self.config.adapter_import_root)
        except AdapterRejectedError as exc:
            swapper.refuse_registration(str(exc))
        return swapper.register(path, gated=evaluate)

    def promote(self, name: str, force: bool = False) -> SwapResult:
        """An operator's promote. One the gates rejected (or a canary rolled back) needs `force`, and
        the swap log records that it was forced and what it overrode."""
        reason = manual_promote_reason(name, self.registry.get(name), force)
        return self._started().swapper.promote(name, reason)

    def start_canary(self, name: str, share: float | None) -> SwapResult:
        chosen = self.config.gateway.canary_share if share is None else share
        return self._started().swapper.start_canary(name, chosen, "manual canary (admin API)")

    def stop_canary(self) -> SwapResult:
        return self._started().swapper.stop_canary("canary stopped (admin API)")

    def vllm_metrics(self) -> str:
        """vLLM's own Prometheus metrics (tokens, latency, KV cache, LoRA requests)."""
        return self._started().supervisor.client.metrics_text()

    def rollback(self) -> SwapResult:
        return self._started().swapper.rollback("manual rollback (admin API)")

    def live_model(self) -> tuple[str, str] | None:
        """(vLLM URL, the live model's served name) while serving is ready, else None."""
        parts = self._parts
        if parts is None or not parts.supervisor.is_ready():
            return None
        return parts.supervisor.url, parts.router.routing.live_or_base

    def status_sections(self) -> dict[str, ServingStatus]:
        parts = self._parts
        if parts is None:
            return {self.name: ServingStatus(state="not started", public_model_name=self._public_name)}
        sup, routing, base = parts.supervisor, parts.router.routing, parts.base
        return {
            self.name: ServingStatus(
                state=sup.state.value,
                url=sup.url,
                pid=sup.pid,
                restarts=sup.restarts,
                base_model=BaseModelStatus(name=base.name, path=str(base.path), sha256=base.content_hash),
                gateway_url=self.gateway_url,
                public_model_name=self._public_name,
                live=routing.live_or_base,
                previous=routing.previous,
                canary=routing.canary,
                loaded_adapters=sorted(parts.swapper.loaded),
                replicas=self._fleet.replica_urls if self._fleet is not None else [],
                adapter_dir=str(self._fleet.adapter_dir) if self._fleet is not None else None,
            )
        }

    @property
    def _public_name(self) -> str:
        return self.config.gateway.public_model_name
