"""`evolvd run --role gateway`: one of several stateless gateways in front of a serving fleet.

A member holds no routing of its own: it reads what the daemon that swaps adapters published to the
shared buffer (evolvd.serving.routing_table) every `gateway.routing_poll_s` and routes the public
model name by it, so any number of members behind a load balancer flip together, within one poll of
the swap. It proxies to `serving.url` (vllm-router, or one vLLM server), answers 503 while that does
not answer its health check or while nothing is published yet, and keeps serving the last routing it
read while the buffer is unreachable. While a canary runs, the outcome of every request it routed by
the alias goes to the buffer (evolvd.serving.served_log), so the canary's verdict counts its traffic.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from evolvd.buffer import Buffer
from evolvd.buffer.keys import CAPTURE_SEAL_KEY, buffer_key
from evolvd.config import EvolvdConfig
from evolvd.connectors.kafka_publisher import KafkaPublisher
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.http_server import HttpServer
from evolvd.metrics import GatewayMemberMetrics, ServingMetrics
from evolvd.serving.gateway import GATEWAY_URL_FILE, Gateway
from evolvd.serving.routing import Router
from evolvd.serving.routing_table import PublishedRouting, RoutingTable
from evolvd.serving.served_log import ServedLog, ServedOutbox
from evolvd.status_models import GatewayMemberStatus

logger = logging.getLogger("evolvd.gateway")


class GatewayMember:
    name = "gateway"

    def __init__(
        self,
        config: EvolvdConfig,
        buffer: Buffer,
        metrics: ServingMetrics,
        member_metrics: GatewayMemberMetrics,
        upstream_api_key: str | None,
    ) -> None:
        assert config.serving.url is not None, "the config validates serving.url for role gateway"
        self._config = config
        self._buffer = buffer
        self._metrics = metrics
        self._member_metrics = member_metrics
        self._upstream_api_key = upstream_api_key
        self.member_id = f"{socket.gethostname()}-{os.getpid()}"
        self._table = RoutingTable(buffer)
        # The base model's name is what the daemon publishes; until then every request gets 503.
        self._router = Router("", config.gateway.public_model_name)
        self._published: PublishedRouting | None = None
        self._last_read: float | None = None
        self._read_error: str | None = None
        self._upstream = VLLMClient(
            config.serving.url, timeout_s=5, api_key=upstream_api_key, health_path=config.serving.health_path
        )
        self._upstream_ok = False
        self._outbox = ServedOutbox(ServedLog(buffer), self.member_id, self._canary_running)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="evolvd-routing", daemon=True)
        self._capture: KafkaPublisher | None = None
        self._server: HttpServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        cfg = self._config
        self._read_routing()
        self._check_upstream()
        self._thread.start()
        if cfg.gateway.capture:
            self._capture = KafkaPublisher(cfg.kafka, cfg.kafka.bootstrap_servers, cfg.kafka.topic)
        assert cfg.serving.url is not None
        app = Gateway(
            config=cfg.gateway,
            router=self._router,
            upstream_url=cfg.serving.url,
            upstream_api_key=self._upstream_api_key,
            is_ready=self.ready,
            loaded_adapters=lambda: [],  # a member loads nothing: the fleet's replicas resolve adapters
            metrics=self._metrics,
            api_keys=set(cfg.gateway.api_keys()),
            capture=self._capture,
            served_stats=self._outbox,
            seal_key=buffer_key(self._buffer.cursor(), CAPTURE_SEAL_KEY),
        ).app()
        self._server = HttpServer(app, cfg.gateway.host, cfg.gateway.port, name="evolvd-gateway")
        self._server.start()
        (cfg.data_dir / GATEWAY_URL_FILE).write_text(self._server.url + "\n")
        logger.info(
            "gateway member %s serving %r at %s/v1 in front of %s, routing from the buffer",
            self.member_id,
            cfg.gateway.public_model_name,
            self._server.url,
            cfg.serving.url,
        )

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.stop()
            (self._config.data_dir / GATEWAY_URL_FILE).unlink(missing_ok=True)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self._outbox.flush()  # what was served since the last write still counts for the canary
        except Exception as exc:
            logger.warning("served outcomes not written at stop: %s", exc)
        if self._capture is not None:
            self._capture.close(timeout_s=10)
        self._upstream.close()

    # -- following the published routing -------------------------------------------------------

    def _follow(self) -> None:
        poll_s = self._config.gateway.routing_poll_s
        health_every_s = self._config.serving.health_interval_s
        checked = time.monotonic()
        while not self._stop.wait(poll_s):
            self._read_routing()
            self._write_outcomes()
            if time.monotonic() - checked >= health_every_s:
                self._check_upstream()
                checked = time.monotonic()

    def _read_routing(self) -> None:
        """Adopt a newer published routing; on a read error keep serving the last one read."""
        try:
            published = self._table.read()
        except Exception as exc:
            self._member_metrics.routing_read_failures.inc()
            if self._read_error is None:  # once per outage, not once per poll
                logger.warning("cannot read the routing from the buffer; serving the last read: %s", exc)
            self._read_error = str(exc)
            return
        if self._read_error is not None:
            logger.info("reading the routing from the buffer again")
            self._read_error = None
        self._last_read = time.time()
        self._member_metrics.routing_last_read.set(self._last_read)
        if published is None or (self._published and published.generation <= self._published.generation):
            return
        self._router.adopt(published.routing)
        self._published = published
        self._member_metrics.routing_generation.set(published.generation)
        routing = published.routing
        logger.info(
            "routing generation %d: %r -> %s%s",
            published.generation,
            self._router.public_name,
            routing.live_or_base,
            f", canary {routing.canary} ({routing.canary_share:.0%})" if routing.canary else "",
        )

    def _write_outcomes(self) -> None:
        try:
            self._outbox.flush()
        except Exception as exc:
            logger.warning("served outcomes not written (kept for the next write): %s", exc)
        self._member_metrics.outcomes_dropped.set(self._outbox.dropped)

    def _check_upstream(self) -> None:
        ok = self._upstream.healthy()
        if ok != self._upstream_ok:
            url, path = self._upstream.base_url, self._config.serving.health_path
            if ok:
                logger.info("upstream %s answers %s", url, path)
            else:
                logger.warning("upstream %s does not answer %s: requests get 503", url, path)
        self._upstream_ok = ok
        self._metrics.up.set(1 if ok else 0)

    def _canary_running(self) -> bool:
        return self._router.routing.canary is not None

    # -- what the daemon shows -----------------------------------------------------------------

    def ready(self) -> bool:
        return self._published is not None and self._upstream_ok

    def unready_reason(self) -> str | None:
        if self._published is None:
            return "no routing published yet (is the daemon that swaps adapters running on this buffer?)"
        if not self._upstream_ok:
            return f"upstream {self._upstream.base_url} does not answer {self._config.serving.health_path}"
        return None

    def status_sections(self) -> dict[str, GatewayMemberStatus]:
        published = self._published
        routing = published.routing if published is not None else None
        return {
            self.name: GatewayMemberStatus(
                member=self.member_id,
                url=self._server.url if self._server is not None else None,
                upstream=self._upstream.base_url,
                upstream_ok=self._upstream_ok,
                public_model_name=self._router.public_name,
                routing_generation=published.generation if published is not None else None,
                live=routing.live_or_base if routing is not None else None,
                canary=routing.canary if routing is not None else None,
                canary_share=routing.canary_share if routing is not None else 0.0,
                routing_read_age_s=round(time.time() - self._last_read, 3) if self._last_read else None,
                routing_read_error=self._read_error,
                outcomes_dropped=self._outbox.dropped,
            )
        }
