"""Stand-ins for HTTP servers a test does not need the real one of (a replica that answers as told, an
upstream that names the model it was asked for): a loopback server in a thread, answering JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    """Answers with `answer`; logs nothing."""

    def answer(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> dict[str, object]:
        parsed: dict[str, object] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        return parsed

    def log_message(self, *args: object) -> None:
        pass


class StandInServer:
    """`handler` on 127.0.0.1 (a free port) until `close`."""

    def __init__(self, handler: type[JsonHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
