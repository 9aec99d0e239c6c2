"""The alias router: what the public model name means, and how a canary share splits traffic."""

from __future__ import annotations

import random
import threading

import pytest

from evolvd.buffer import Buffer
from evolvd.serving.routing import Router, Routing, RoutingNotPublishedError
from evolvd.serving.routing_table import RoutingTable


def test_alias_means_the_base_model_before_any_adapter() -> None:
    router = Router("base", "evolvd")
    assert router.resolve("evolvd") == "base"
    assert router.resolve("some-adapter-v1") == "some-adapter-v1"  # explicit names pass through


def test_flip_is_atomic_and_reports_before_and_after() -> None:
    router = Router("base", "evolvd")
    before, after = router.update(live="a1", previous=None)
    assert (before.live, after.live) == (None, "a1")
    assert router.resolve("evolvd") == "a1"
    assert router.routing.resident() == {"a1"}


def test_canary_share_splits_alias_traffic() -> None:
    router = Router("base", "evolvd", rng=random.Random(7))
    router.update(live="a1", canary="a2", canary_share=0.25)
    picks = [router.resolve("evolvd") for _ in range(4000)]
    share = picks.count("a2") / len(picks)
    assert 0.22 < share < 0.28
    assert set(picks) == {"a1", "a2"}
    router.update(canary=None, canary_share=0.0)
    assert {router.resolve("evolvd") for _ in range(100)} == {"a1"}


def test_readers_never_see_a_half_applied_update() -> None:
    router = Router("base", "evolvd")
    seen: set[tuple[str | None, str | None]] = set()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            r = router.routing
            seen.add((r.live, r.previous))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(1, 2000):
        router.update(live=f"a{i}", previous=f"a{i - 1}")
    stop.set()
    thread.join()
    assert all(
        prev is None or (live is not None and int(live[1:]) == int(prev[1:]) + 1) for live, prev in seen
    )


def test_a_change_that_cannot_be_published_does_not_happen() -> None:
    published: list[Routing] = []
    router = Router("base", "evolvd", publish=published.append)
    router.update(live="a1")
    assert [r.live for r in published] == ["a1"]

    def unreachable(routing: Routing) -> None:
        raise OSError("connection refused")

    router = Router("base", "evolvd", publish=unreachable)
    with pytest.raises(RoutingNotPublishedError, match="connection refused"):
        router.update(live="a2")
    assert router.routing.live is None and router.resolve("evolvd") == "base"


def test_the_routing_table_keeps_what_was_published_last_on_either_backend(either_buffer: Buffer) -> None:
    table = RoutingTable(either_buffer)
    assert table.read() is None  # nothing published: a gateway member serves nothing yet
    router = Router("base", "evolvd", publish=table.publish)
    router.update()
    router.update(live="a1")
    router.update(live="a2", previous="a1", canary="c1", canary_share=0.25)
    published = table.read()
    assert published is not None and published.generation == 3
    assert published.routing == Routing("base", "a2", "a1", "c1", 0.25) == router.routing


def test_window_stats_join_outcomes_of_every_gateway(either_buffer: Buffer) -> None:
    from evolvd.serving.served_log import ServedLog, ServedOutbox
    from evolvd.serving.served_stats import ServedStats, WindowStats

    local = ServedStats()
    local.record("c1", True, 0.2)
    canary_running = [False]
    outbox = ServedOutbox(ServedLog(either_buffer), "member-1", lambda: canary_running[0])
    outbox.record("c1", True, 9.0)  # no canary running: nothing is kept
    canary_running[0] = True
    outbox.record("c1", False, 0.5)
    outbox.record("c1", True, 0.4)
    outbox.record("a1", True, 0.3)
    assert outbox.flush() == 3
    members = ServedLog(either_buffer).since("c1", 0.0)
    window = WindowStats.of(local.outcomes_since("c1", 0.0) + members)
    assert (window.requests, window.errors, sorted(window.latencies)) == (3, 1, [0.2, 0.4])


def test_only_the_member_leading_the_loop_publishes_the_routing(postgres_url: str) -> None:
    import psycopg

    from evolvd.buffer.leadership import Fence, StaleLeaderError
    from evolvd.buffer.postgres_buffer import PostgresBuffer

    buffer = PostgresBuffer(postgres_url)
    try:
        fence = Fence(shared=True)
        table = RoutingTable(buffer, fence)
        assert not fence.leads  # a standby: its routing is its own gateway's
        with pytest.raises(StaleLeaderError):
            table.publish(Routing("base"))
        fence.begin_term(0)  # the shared row's term
        assert table.writable and table.publish(Routing("base", live="a1")) == 1
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute(b"UPDATE loop_leader SET token = token + 1")  # another member was elected since
        with pytest.raises(StaleLeaderError, match="stale"):
            table.publish(Routing("base", live="a2"))
        published = table.read()
        assert published is not None and published.routing.live == "a1"
    finally:
        buffer.close()
