"""bench/selfimprove.py's bookkeeping, without the daemon: when a cycle is measured again and when the
previous measurement of the same served adapter stands."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("selfimprove_harness", ROOT / "bench" / "selfimprove.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def measurement(harness: ModuleType, acc: float) -> object:
    return harness.Measurement(acc, acc - 0.1, acc + 0.1, [True, False], {"f": acc}, 0.5, 0.9, 12.0)


def test_a_promoted_candidate_is_measured_again(harness: ModuleType) -> None:
    cycle = harness.Cycle(cycle=1, prompts=4, labeled=4, decision="promote", live_after="v1")
    fresh = measurement(harness, 0.7)
    harness.measure_cycle(cycle, "base", measurement(harness, 0.5), lambda: fresh)
    assert cycle.measurement is fresh
    assert not cycle.measurement_carried_over
    assert cycle.stage_seconds["measurement"] == 12.0
    assert cycle.outcome()["measurement_carried_over"] is False


def test_an_unchanged_served_adapter_keeps_its_measurement(harness: ModuleType) -> None:
    cycle = harness.Cycle(cycle=2, prompts=4, labeled=4, decision="reject", live_after="v1")
    before = measurement(harness, 0.6)

    def must_not_measure() -> object:
        raise AssertionError("the same adapter was measured again")

    harness.measure_cycle(cycle, "v1", before, must_not_measure)
    assert cycle.measurement is before
    assert cycle.measurement_carried_over
    assert cycle.stage_seconds["measurement"] == 0.0
    assert cycle.outcome()["measurement_carried_over"] is True


def test_an_unknown_served_adapter_is_measured(harness: ModuleType) -> None:
    """A status that did not name the live adapter is no evidence that it is unchanged."""
    cycle = harness.Cycle(cycle=1, prompts=4, labeled=0, live_after=None)
    fresh = measurement(harness, 0.4)
    harness.measure_cycle(cycle, None, measurement(harness, 0.5), lambda: fresh)
    assert cycle.measurement is fresh
