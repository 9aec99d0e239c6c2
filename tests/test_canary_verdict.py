"""A canary is rolled back for a regression beyond its bound that is also significant (issue 24):
Fisher's exact test on error counts, Mann-Whitney U on latencies. A small canary share must not be
rolled back on noise, and a real regression must still be caught."""

from __future__ import annotations

import random

import numpy as np

from evolvd.loop.promotion import CanarySignals, compared, regressions
from evolvd.policies.models import RollbackPolicy
from evolvd.serving.served_stats import WindowStats

POLICY = RollbackPolicy(
    max_error_rate_increase=0.02, max_latency_ratio=1.5, max_feedback_drop=0.2, max_p_value=0.05
)


def window(requests: int, errors: int, latencies: list[float]) -> WindowStats:
    p95 = float(np.percentile(latencies, 95)) if latencies else None  # as ServedStats computes it
    return WindowStats(requests, errors, p95, tuple(latencies))


def verdict(canary: WindowStats, live: WindowStats, policy: RollbackPolicy = POLICY) -> list[str]:
    error_p, latency_p = compared(canary, live)
    signals = CanarySignals(
        canary.requests, live.requests, canary.error_rate, live.error_rate, canary.p95_seconds,
        live.p95_seconds, None, None, error_p, latency_p,
    )  # fmt: skip
    return regressions(signals, policy)


def latencies(n: int, scale: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(0, 0.5) * scale for _ in range(n)]


def test_one_unlucky_error_in_a_small_canary_is_noise_not_a_regression() -> None:
    # 1 error in 20 canary requests (5%) against 2 in 400 live (0.5%): beyond the +2% bound, but
    # such a difference arises by chance far too often to act on.
    canary, live = window(20, 1, latencies(19, 1.0, 1)), window(400, 2, latencies(398, 1.0, 2))
    assert verdict(canary, live) == []
    # With the significance test switched off, the bound alone decides: rolled back.
    off = POLICY.model_copy(update={"max_p_value": 1.0})
    assert verdict(canary, live, off)[0].startswith("promotion.rollback.max_error_rate_increase")


def test_a_real_error_regression_is_caught() -> None:
    canary, live = window(200, 20, latencies(180, 1.0, 3)), window(2000, 10, latencies(1990, 1.0, 4))
    (reason,) = verdict(canary, live)
    assert reason.startswith("promotion.rollback.max_error_rate_increase: error rate 0.100 vs 0.005")
    assert "p=" in reason


def test_a_slow_tail_in_a_few_requests_is_noise_and_a_slow_canary_is_not() -> None:
    live = window(500, 0, latencies(500, 1.0, 5))
    # Ten requests, p95 above 1.5x by one slow outlier; the rest as fast as live.
    few = window(10, 0, [*latencies(9, 1.0, 6), 30.0])
    assert few.p95_seconds is not None and live.p95_seconds is not None
    assert few.p95_seconds / live.p95_seconds > 1.5, "beyond the bound: only the test stops a rollback"
    assert verdict(few, live) == []
    slow = window(100, 0, latencies(100, 2.5, 7))  # every request slower
    (reason,) = verdict(slow, live)
    assert reason.startswith("promotion.rollback.max_latency_ratio")


def test_without_traffic_on_both_sides_nothing_is_significant() -> None:
    assert compared(window(0, 0, []), window(100, 1, latencies(99, 1.0, 8))) == (1.0, 1.0)
