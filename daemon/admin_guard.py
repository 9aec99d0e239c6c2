"""The admin API's front door, in front of FastAPI: what is refused before any route or body parser runs.

A daemon on loopback is still reachable from every web page its operator opens: a page can send a
cross-site POST (`text/plain`, or no body at all, needs no CORS preflight) and, through DNS
rebinding, read responses under its own host name. So, before the app sees a request:

- the bearer token (there is always one: evolvd.admin_token) is checked first: a wrong token never
  gets its body read;
- a mutating request (POST, PUT, PATCH, DELETE) must say `Content-Type: application/json` (a
  browser cannot send that cross-site without a preflight this API never answers) and must not
  come from a foreign `Origin`;
- on a loopback bind, the `Host` header must name loopback (a rebound name is refused);
- a body over the limit is refused (413) from its Content-Length; a chunked body, which has none,
  is refused (411), so no request body is ever read past the limit.

/healthz and /readyz stay open to orchestrator probes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY_BYTES = 1024 * 1024
"""The largest admin request body: a policy dry-run of a whole policy folder fits many times over."""


class AdminGuard:
    def __init__(
        self, app: ASGIApp, token: str, loopback_only: bool, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()
        self._loopback_only = loopback_only
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            status, detail = refusal
            await _reply(send, status, detail, {"www-authenticate": "Bearer"} if status == 401 else {})
            return
        await self._app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self._loopback_only and not _is_loopback(host):
            return 421, f"Host {host!r} is not this daemon's loopback address (DNS rebinding?)"
        if scope["path"] in OPEN_PATHS:
            return None
        return (
            self._auth_refusal(headers)
            or (_cross_site_refusal(headers, host) if scope["method"] in MUTATING else None)
            or self._body_refusal(headers)
        )

    def _auth_refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        given = headers.get("authorization", "").encode("latin-1")
        return None if hmac.compare_digest(given, self._expected) else (401, "missing or wrong bearer token")

    def _body_refusal(self, headers: dict[str, str]) -> tuple[int, str] | None:
        if "transfer-encoding" in headers:
            return 411, "send the request body with a Content-Length"
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_body_bytes):
            return 413, f"request body over {self._max_body_bytes} bytes"
        return None


def _cross_site_refusal(headers: dict[str, str], host: str) -> tuple[int, str] | None:
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host:
        return 403, f"cross-origin request from {origin!r} refused"
    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return 415, "a request that changes state must send Content-Type: application/json"
    return None


def _is_loopback(host_header: str) -> bool:
    """Whether a Host header (`127.0.0.1:8750`, `localhost`, `[::1]:8750`) names this machine's loopback."""
    if host_header.startswith("["):
        name = host_header[1:].split("]", 1)[0]
    else:
        name = host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _reply(send: Send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
