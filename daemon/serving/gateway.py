"""The OpenAI-compatible front door: resolves the public model name to the live adapter and proxies.

While the serving process is down it answers 503 with Retry-After at once, instead of letting
clients hang on a dead upstream. With capture on, each answered request is published to the prompts
topic in the message contract, so live traffic feeds the loop.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from evolvd import __version__
from evolvd.capture_seal import seal
from evolvd.config import GatewayConfig
from evolvd.connectors.vllm_client import CLIENT_KEEPALIVE_S, bearer_header
from evolvd.contract import encode_message
from evolvd.metrics import GATEWAY_ROUTES, ServingMetrics
from evolvd.serving.routing import Router
from evolvd.serving.self_refine import SelfRefiner
from evolvd.serving.served_stats import OutcomeRecorder
from evolvd.sse_text import StreamedText

logger = logging.getLogger("evolvd.gateway")
access_logger = logging.getLogger("evolvd.gateway.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
GATEWAY_URL_FILE = "gateway.url"
"""Where a daemon running a gateway writes its URL, in its data_dir."""


class CaptureSink(Protocol):
    def publish(self, value: bytes, key: bytes | None) -> None: ...


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape: `type`, then `code` (a string or null) and `param` (the request
    field at fault, or null), which OpenAI's client libraries read."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status, headers=headers)


def _request_id(request: Request) -> str:
    """The client's `x-request-id` when it is a plain token (it goes into logs), else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _json_object(raw: bytes) -> dict[str, Any] | JSONResponse:
    try:
        body = json.loads(raw)
    except ValueError:
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return body


class Gateway:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        router: Router,
        upstream_url: str,
        upstream_api_key: str | None,
        is_ready: Callable[[], bool],
        loaded_adapters: Callable[[], list[str]],
        metrics: ServingMetrics,
        api_keys: set[str],
        capture: CaptureSink | None = None,
        served_stats: OutcomeRecorder | None = None,
        seal_key: str | None = None,
        refiner: SelfRefiner | None = None,
    ) -> None:
        """`seal_key`: the buffer's capture key; each capture record carries its seal (capture_seal).
        `refiner`: gateway.self_refine's critique-and-refine step (None: off)."""
        self._refiner = refiner
        self._config = config
        self._router = router
        self._is_ready = is_ready
        self._loaded_adapters = loaded_adapters
        self._metrics = metrics
        self._api_keys = api_keys
        self._capture = capture
        self._served_stats = served_stats
        self._seal_key = seal_key
        self._unavailable = {"Retry-After": str(config.retry_after_s)}
        self._created = int(time.time())
        """`created` of the served names (Unix seconds): when this gateway started serving them."""
        self._client = httpx.AsyncClient(
            base_url=upstream_url,
            headers=bearer_header(upstream_api_key),
            timeout=httpx.Timeout(config.request_timeout_s, connect=5.0),
            limits=httpx.Limits(
                max_connections=512, max_keepalive_connections=128, keepalive_expiry=CLIENT_KEEPALIVE_S
            ),
        )

    def app(self) -> FastAPI:
        app = FastAPI(title="evolvd gateway", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/version", self.version, methods=["GET"])
        app.add_api_route("/v1/models", self.models, methods=["GET"])
        # What vLLM's own server serves for a model, for the public name: clients written against
        # vLLM work unchanged. Every route resolves the alias, checks keys and caps, and is counted.
        for route in GATEWAY_ROUTES:
            app.add_api_route(route, self._route(route), methods=["POST"])
        return app

    def _route(self, route: str) -> Callable[[Request], Awaitable[Response]]:
        async def proxied(request: Request) -> Response:
            return await self._timed(request, route)

        return proxied

    def _authorized(self, request: Request) -> bool:
        if not self._api_keys:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return any(hmac.compare_digest(given.encode(), key.encode()) for key in self._api_keys)

    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "serving_ready": self._is_ready()}

    async def health(self) -> Response:
        """vLLM's /health: 200 while the model can answer, 503 while serving restarts."""
        return Response(status_code=200 if self._is_ready() else 503)

    async def version(self) -> dict[str, str]:
        return {"version": __version__}

    async def models(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "invalid API key", code="invalid_api_key")
        routing = self._router.routing
        public = self._router.public_name
        # The public name and the operator's allow-list only: what is loaded for evaluation or kept
        # for rollback is not for clients.
        names = dict.fromkeys([public, *self._config.extra_models])
        data = [{"id": n, "object": "model", "created": self._created, "owned_by": "evolvd"} for n in names]
        data[0]["root"] = routing.live_or_base  # what the public name means right now
        return JSONResponse({"object": "list", "data": data})

    async def _timed(self, request: Request, route: str) -> Response:
        started = time.perf_counter()
        status, served = 500, "-"
        request_id = _request_id(request)
        try:
            response = await self._proxy(request, route, request_id)
            response.headers["x-request-id"] = request_id
            status, served = response.status_code, response.headers.get("x-evolvd-model", "-")
            return response
        finally:
            seconds = time.perf_counter() - started
            self._metrics.gateway_requests.labels(route, str(status)).inc()
            self._metrics.gateway_seconds.labels(route).observe(seconds)
            if self._config.access_log:
                client = request.client.host if request.client else "-"
                line = "%s %s %d %.3fs model=%s request_id=%s"
                access_logger.info(line, client, route, status, seconds, served, request_id)

    async def _read_body(self, request: Request) -> dict[str, Any] | JSONResponse:
        if not self._authorized(request):
            return _error(401, "invalid API key", code="invalid_api_key")
        raw = await self._limited_body(request)
        if raw is None:
            limit = self._config.max_body_bytes
            return _error(413, f"request body is over {limit} bytes", code="request_too_large")
        body = _json_object(raw)
        if isinstance(body, JSONResponse):
            return body
        if (refused := self._refusal(body)) is not None:
            return refused
        if not self._is_ready():
            return _error(503, "the serving process is restarting; retry shortly", "service_unavailable",
                          self._unavailable, code="serving_restarting")  # fmt: skip
        return body

    async def _limited_body(self, request: Request) -> bytes | None:
        """The body, or None past gateway.max_body_bytes (read no further than the limit)."""
        limit = self._config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _refusal(self, body: dict[str, Any]) -> JSONResponse | None:
        """A request the gateway does not pass on: a model not served to clients, or caps exceeded."""
        cfg = self._config
        model = body.get("model")
        if model is not None and model != self._router.public_name and model not in cfg.extra_models:
            return _error(404, f"The model `{model}` does not exist.", code="model_not_found", param="model")
        for field, cap in (("max_tokens", cfg.max_tokens), ("max_completion_tokens", cfg.max_tokens),
                           ("max_output_tokens", cfg.max_tokens),
                           ("n", cfg.max_n), ("best_of", cfg.max_n)):  # fmt: skip
            value = body.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value > cap):
                return _error(400, f"`{field}` must be an integer of at most {cap}", param=field)
        return None

    async def _proxy(self, request: Request, route: str, request_id: str) -> Response:
        body = await self._read_body(request)
        if isinstance(body, JSONResponse):
            return body
        requested = str(body.get("model") or self._router.public_name)
        served = self._router.resolve(requested)
        # Only traffic the alias routed counts in a canary's window: requests that name a model
        # themselves chose it, and would let anyone fill the window with a quick, tiny sample.
        judged = served if requested == self._router.public_name else None
        body["model"] = served
        headers = {"x-evolvd-model": served}
        upstream_headers = {"X-Request-Id": request_id}  # vLLM names the request by it in its logs
        started = time.perf_counter()
        try:
            if body.get("stream"):
                response = await self._stream(route, body, headers, request_id)
                self._served(judged, response.status_code, started)
                return response
            upstream = await self._client.post(route, json=body, headers=upstream_headers)
        except httpx.TransportError as exc:
            logger.warning("upstream failed for %s: %s", route, exc)
            self._served(judged, 503, started)
            return _error(503, "the serving process is not answering; retry shortly", "service_unavailable",
                          self._unavailable, code="serving_unavailable")  # fmt: skip
        content = upstream.content
        if upstream.status_code == 200 and judged is not None and route == "/v1/chat/completions":
            content = await self._refined(body, content, served, headers)
        self._served(judged, upstream.status_code, started)
        if self._capture is not None and upstream.status_code == 200:
            self._record(body, json.loads(content), served, request_id)
        return Response(content, upstream.status_code, media_type="application/json", headers=headers)

    async def _refined(
        self, body: dict[str, Any], content: bytes, served: str, headers: dict[str, str]
    ) -> bytes:
        """gateway.self_refine: the answer critiqued and refined before the client sees it (one answer,
        whose last message is the user's); the refinement replaces it only when the judge scores it higher."""
        messages = body.get("messages")
        if self._refiner is None or body.get("n", 1) != 1 or not isinstance(messages, list) or not messages:
            return content
        last = messages[-1]
        if (
            not isinstance(last, dict)
            or last.get("role") != "user"
            or not isinstance(last.get("content"), str)
        ):
            return content
        answer = json.loads(content)
        message = answer["choices"][0]["message"]
        try:
            refined = await asyncio.to_thread(
                self._refiner.refine, last["content"], message.get("content") or "", served
            )
        except Exception as exc:  # the client still gets the model's first answer
            logger.warning("self-refinement failed, the first answer is sent: %s", exc)
            self._metrics.gateway_refinements.labels("failed").inc()
            return content
        self._metrics.gateway_refinements.labels("replaced" if refined.replaced else "kept").inc()
        headers["x-evolvd-refined"] = "true" if refined.replaced else "false"
        if not refined.replaced:
            return content
        message["content"] = refined.text
        return json.dumps(answer).encode()

    def _served(self, served: str | None, status: int, started: float) -> None:
        # Client errors (4xx) say nothing about the model; 5xx and transport failures count against it.
        # None: the client named the model itself, which says nothing about the alias's routing.
        if self._served_stats is not None and served is not None:
            self._served_stats.record(served, status < 500, time.perf_counter() - started)

    async def _stream(
        self, route: str, body: dict[str, Any], headers: dict[str, str], request_id: str
    ) -> Response:
        built = self._client.build_request("POST", route, json=body, headers={"X-Request-Id": request_id})
        upstream = await self._client.send(built, stream=True)
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            return Response(content, upstream.status_code, media_type="application/json", headers=headers)
        return StreamingResponse(self._relay(upstream, body, headers["x-evolvd-model"], request_id),
                                 media_type="text/event-stream", headers=headers)  # fmt: skip

    async def _relay(
        self, upstream: httpx.Response, body: dict[str, Any], served: str, request_id: str
    ) -> AsyncIterator[bytes]:
        text = StreamedText()
        try:
            async for chunk in upstream.aiter_raw():
                if self._capture is not None:
                    text.feed(chunk)
                yield chunk
        finally:
            await upstream.aclose()
        if self._capture is not None and (answer := text.finish()):
            self._record(body, {"id": f"stream-{uuid.uuid4().hex}", "text": answer}, served, request_id)

    def _record(
        self, request: dict[str, Any], response: dict[str, Any], served: str, request_id: str
    ) -> None:
        assert self._capture is not None
        choice = (response.get("choices") or [{}])[0]
        text = response.get("text") or choice.get("text") or (choice.get("message") or {}).get("content")
        message_id = f"gw-{response.get('id') or uuid.uuid4().hex}"
        prompt = request.get("prompt") if isinstance(request.get("prompt"), str) else None
        messages = request.get("messages") if prompt is None else None
        if prompt is None and not messages:
            return
        try:
            metadata = {"source": "gateway", "served_by": served, "request_id": request_id}
            if self._seal_key is not None:
                metadata["seal"] = seal(self._seal_key, message_id, served)
            value = encode_message(message_id, prompt, messages=messages, response=text, metadata=metadata,
                                   ts=time.time())  # fmt: skip
            self._capture.publish(value, message_id.encode())
        except Exception:  # capture must never fail the client's request
            logger.exception("capture of %s failed", message_id)
