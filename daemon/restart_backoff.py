"""The one restart policy of the daemon's supervised parts (the ingest thread, the vLLM process):
wait longer after each failure, up to a ceiling, and start again from the shortest wait once the part
has been healthy for a while, so a failure days after the last one is not treated as a crash loop."""

from __future__ import annotations

import time
from collections.abc import Callable


class RestartBackoff:
    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        healthy_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._healthy_after_s = healthy_after_s
        self._clock = clock
        self._next_s = initial_s
        self._last_restart: float | None = None

    def next_delay(self) -> float:
        """How long to wait before this restart; the wait after it doubles (to the ceiling), unless the
        part ran healthy for `healthy_after_s` since the previous restart."""
        now = self._clock()
        if self._last_restart is not None and now - self._last_restart >= self._healthy_after_s:
            self._next_s = self._initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        self._last_restart = now
        return delay

    def healthy(self) -> None:
        """The part reported itself healthy: the next failure waits the shortest time again."""
        self._next_s = self._initial_s
