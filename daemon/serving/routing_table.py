"""The `routing` table's one owner: what the public model name routes to, as the daemon that swaps
adapters last published it.

The daemon's router writes it on every flip, before the flip takes effect in memory (a flip that
cannot be published does not happen), so the table is never behind the daemon's own gateway. Gateway
members (`evolvd run --role gateway`) read it: any number of them route as the daemon does."""

from __future__ import annotations

from dataclasses import dataclass

from evolvd.buffer import Buffer, transaction
from evolvd.buffer.leadership import Fence
from evolvd.serving.routing import Routing


@dataclass(frozen=True)
class PublishedRouting:
    generation: int
    """Grows by one with every publication: a reader that saw it has nothing newer to apply."""
    routing: Routing


class RoutingTable:
    def __init__(self, buffer: Buffer, fence: Fence | None = None) -> None:
        """`fence`: the loop's term on a shared buffer (only its leader publishes); default: the only
        member of its loop."""
        self._buffer = buffer
        self._fence = fence or Fence.sole()

    @property
    def writable(self) -> bool:
        """Whether this member publishes: it leads the loop (a standby's routing is its own)."""
        return self._fence.leads

    def publish(self, routing: Routing) -> int:
        """Write `routing` as the one in force; returns its generation. StaleLeaderError: a newer term
        of the loop began, and this member's routing is not the fleet's any more."""
        with transaction(self._buffer.cursor()) as con:
            token = self._fence.check(con)
            row = con.execute(
                "UPDATE routing SET generation = generation + 1, base = ?, live = ?, previous = ?,"
                " canary = ?, canary_share = ?, fencing_token = ?, updated_at = now() WHERE id = 1"
                " RETURNING generation",
                [routing.base, routing.live, routing.previous, routing.canary, routing.canary_share, token],
            ).fetchone()
        assert row is not None, "migration 0012 inserts the routing row"
        return int(row[0])

    def read(self) -> PublishedRouting | None:
        """The routing in force, or None while nothing has been published (no serving daemon yet)."""
        row = (
            self._buffer.cursor()
            .execute(
                "SELECT generation, base, live, previous, canary, canary_share FROM routing WHERE id = 1"
            )
            .fetchone()
        )
        if row is None or int(row[0]) == 0 or row[1] is None:
            return None
        generation, base, live, previous, canary, share = row
        return PublishedRouting(int(generation), Routing(base, live, previous, canary, float(share)))
