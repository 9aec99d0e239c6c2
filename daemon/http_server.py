"""An ASGI app under uvicorn on a background thread: how the admin API and the gateway are served.

uvicorn bounds idle keep-alive connections, but not a client that opens a connection and sends its
request line and headers a byte at a time (slowloris): each such connection holds one of the
server's `limit_concurrency` slots for as long as the client likes, so a few dozen of them lock the
operator out. `HeaderDeadline` closes a connection whose request head is not complete within
`header_timeout_s` of the connection opening or of its previous response.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
"""Time for a request line and its headers (a CLI call sends them in one packet)."""
MAX_HEAD_BYTES = 16 * 1024
"""The largest request line plus headers."""


def header_deadline_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head takes over `timeout_s`."""

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_after: object = None
        """The request cycle that was current when the deadline was set; a new one means the head
        of the next request arrived."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._disarm_if_head_arrived()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()
                self._disarm_if_head_arrived()  # a pipelined request already read

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_after = self.cycle
            self._deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _disarm_if_head_arrived(self) -> None:
            if self.cycle is not self._waiting_after:
                self._disarm()

        def _expire(self) -> None:
            self._deadline = None
            if self.cycle is self._waiting_after and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


class HttpServer:
    """One ASGI app on `host:port` in a daemon thread. `port` is known once started (0 picks one)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        name: str,
        limit_concurrency: int | None = None,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        """`limit_concurrency`: connections and requests at once; past it uvicorn answers 503."""
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                http=header_deadline_protocol(header_timeout_s),
                log_level="warning",
                access_log=False,
                lifespan="off",
                limit_concurrency=limit_concurrency,
                timeout_keep_alive=5,
                h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            )
        )
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.name = name
        self.host = host
        self.port = port

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name} could not bind {self.host}:{self.port} (port in use?)")
            if waited > timeout_s:
                raise RuntimeError(f"{self.name} did not start within {timeout_s:g}s")
            threading.Event().wait(0.02)
            waited += 0.02
        sockets = self._server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        """Safe whatever start() did (the daemon stops every part it tried to start)."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
