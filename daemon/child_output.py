"""Where a child process's output goes: a size-bounded, rotated file, or the daemon's stderr.

vLLM and the embedded broker write for as long as they run; appended to a plain file, that grows
without bound on the data volume. A thread reads the child's stdout and stderr (one pipe) line by
line into a RotatingFileHandler (`max_bytes` per file, `backups` old files kept), or, with
`logging.children: stderr`, onto the daemon's stderr with a `[name]` prefix, where journald and
`kubectl logs` collect it with the daemon's own lines.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
from pathlib import Path
from typing import IO

MAX_BYTES = 20 * 1024 * 1024
BACKUPS = 3


class ChildOutput:
    def __init__(
        self,
        name: str,
        path: Path,
        to_stderr: bool = False,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
    ) -> None:
        self.name = name
        self.path = path
        self._to_stderr = to_stderr
        self._handler: logging.Handler | None = None
        if not to_stderr:
            path.parent.mkdir(parents=True, exist_ok=True)
            # delay: the file opens at the first line, not before a child was even started
            self._handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
            )
            self._handler.setFormatter(logging.Formatter("%(message)s"))

    @property
    def where(self) -> str:
        """Where to look, for messages that send the operator to the child's output."""
        return "the daemon's stderr" if self._to_stderr else str(self.path)

    def note(self, text: str) -> None:
        """A line of the daemon's own among the child's (what it started, and when)."""
        self._write(text)

    def attach(self, stream: IO[bytes]) -> threading.Thread:
        """Copy `stream` (the child's stdout) line by line until the child closes it."""
        thread = threading.Thread(
            target=self._pump, args=(stream,), name=f"evolvd-{self.name}-output", daemon=True
        )
        thread.start()
        return thread

    def _pump(self, stream: IO[bytes]) -> None:
        with stream:
            for line in iter(stream.readline, b""):
                self._write(line.decode("utf-8", errors="replace").rstrip("\n"))
        self.close()  # the child is gone; the next note or child reopens the file

    def close(self) -> None:
        """Close the file (a later line opens it again)."""
        if self._handler is not None:
            self._handler.close()

    def _write(self, text: str) -> None:
        if self._handler is None:
            sys.stderr.write(f"[{self.name}] {text}\n")
            sys.stderr.flush()
        else:
            self._handler.handle(logging.makeLogRecord({"msg": text, "levelno": logging.INFO}))
