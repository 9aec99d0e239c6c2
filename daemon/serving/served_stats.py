"""Per-model request outcomes at the gateway: what a canary is compared on (error rate, latency)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Requests kept per model; a canary window reads only the ones after its start.
_KEEP = 20_000
MAX_MODELS = 8
"""Models kept at once (live, previous, canary and the operator's extra names, with room to spare):
every promotion serves a new adapter name, so without a bound the table grows for the daemon's life.
The model served longest ago is forgotten first."""


@dataclass(frozen=True)
class Outcome:
    at: float
    """When it was answered (epoch seconds)."""
    ok: bool
    seconds: float


class OutcomeRecorder(Protocol):
    """Where a gateway records what it served: the daemon's ServedStats, or a gateway member's outbox
    to the buffer (evolvd.serving.served_log)."""

    def record(self, model: str, ok: bool, seconds: float) -> None: ...


@dataclass(frozen=True)
class WindowStats:
    requests: int
    errors: int
    p95_seconds: float | None
    latencies: tuple[float, ...] = ()
    """Seconds of each answered (non-error) request, for the canary's significance test."""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @classmethod
    def of(cls, outcomes: Iterable[Outcome]) -> WindowStats:
        rows = list(outcomes)
        if not rows:
            return cls(0, 0, None)
        latencies = tuple(o.seconds for o in rows if o.ok)
        return cls(
            requests=len(rows),
            errors=sum(not o.ok for o in rows),
            p95_seconds=float(np.percentile(latencies, 95)) if latencies else None,
            latencies=latencies,
        )


class ServedStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_model: dict[str, deque[Outcome]] = {}

    def record(self, model: str, ok: bool, seconds: float) -> None:
        with self._lock:
            if model not in self._by_model and len(self._by_model) >= MAX_MODELS:
                stalest = min(self._by_model, key=lambda m: self._by_model[m][-1].at)
                del self._by_model[stalest]
            self._by_model.setdefault(model, deque(maxlen=_KEEP)).append(Outcome(time.time(), ok, seconds))

    @property
    def models(self) -> set[str]:
        with self._lock:
            return set(self._by_model)

    def outcomes_since(self, model: str, started_at: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self._by_model.get(model, ()) if o.at >= started_at]

    def since(self, model: str, started_at: float) -> WindowStats:
        return WindowStats.of(self.outcomes_since(model, started_at))
