"""The alias router: what the public model name means, and how a canary share splits traffic."""

from __future__ import annotations

import random
import threading

from evolvd.serving.routing import Router


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
