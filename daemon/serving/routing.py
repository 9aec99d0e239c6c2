"""Which served model the public name means right now. Replaced whole, so readers never see a half-flip.

The daemon that swaps adapters publishes every change before it takes effect (evolvd.serving.
routing_table); gateway members adopt what was published."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Routing:
    base: str
    """The served name of the base model (used before any adapter is live)."""
    live: str | None = None
    previous: str | None = None
    """Kept loaded for instant rollback."""
    canary: str | None = None
    canary_share: float = 0.0

    @property
    def live_or_base(self) -> str:
        return self.live or self.base

    def resident(self) -> set[str]:
        """Adapters that must stay loaded."""
        return {n for n in (self.live, self.previous, self.canary) if n is not None}


class RoutingNotPublishedError(RuntimeError):
    """A change the router could not publish; it did not take effect here either."""


class Router:
    def __init__(
        self,
        base: str,
        public_name: str,
        rng: random.Random | None = None,
        publish: Callable[[Routing], object] | None = None,
    ) -> None:
        """`publish`: called with each new routing before it takes effect (the daemon writes it to the
        buffer for its gateway members); when it raises, the change does not happen."""
        self.public_name = public_name
        self._publish = publish
        self._routing = Routing(base=base)
        self._lock = threading.Lock()
        self._rng = rng or random.Random()  # noqa: S311 - traffic splitting, not security

    @property
    def routing(self) -> Routing:
        return self._routing

    def resolve(self, requested: str) -> str:
        """The served model for a request: the alias goes to live (or canary, by share)."""
        if requested != self.public_name:
            return requested
        routing = self._routing
        if (
            routing.canary is not None
            and routing.canary_share > 0
            and self._rng.random() < routing.canary_share
        ):
            return routing.canary
        return routing.live_or_base

    def update(self, **changes: object) -> tuple[Routing, Routing]:
        """Atomically apply changes; returns (before, after). RoutingNotPublishedError: nothing changed."""
        with self._lock:
            before = self._routing
            after = replace(before, **changes)  # type: ignore[arg-type]
            if self._publish is not None:
                try:
                    self._publish(after)
                except Exception as exc:
                    raise RoutingNotPublishedError(f"routing not published, so not changed: {exc}") from exc
            self._routing = after
            return before, after

    def adopt(self, routing: Routing) -> None:
        """A gateway member: take the routing the swapping daemon published, whole."""
        with self._lock:
            self._routing = routing
