"""What the hot-swapper does when the serving process or the daemon restarts (issue 20, crash paths):
real adapters checked against the bundled base model, a real DuckDB registry and swap log, and a
stand-in for vLLM's LoRA endpoints that can refuse chosen adapters (the real server's restart path
is tests/test_serving.py's killed-vLLM test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from adapters import make_adapter

from evolvd.buffer import DuckDBBuffer
from evolvd.connectors.vllm_client import VLLMError
from evolvd.metrics import ServingMetrics, new_registry
from evolvd.serving.hotswap import HotSwapper
from evolvd.serving.registry import AdapterRegistry
from evolvd.serving.routing import Router


class LoraEndpoints:
    """vLLM's load/unload/probe as the swapper uses them; `refuse` names adapters that fail to load."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.refuse: set[str] = set()

    def load_adapter(self, name: str, path: str) -> None:
        if name in self.refuse:
            raise VLLMError(f"loading {name} failed: the adapter folder vanished", 400)
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.discard(name)

    def probe(self, model: str, prompt: str, max_tokens: int = 1) -> None:
        if model not in self.loaded:
            raise VLLMError(f"The model `{model}` does not exist.", 404)

    def restart(self) -> None:
        self.loaded.clear()


@pytest.fixture(scope="module")
def two_adapters(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap-adapters")
    return make_adapter(base_model, root / "a", seed=1), make_adapter(base_model, root / "b", seed=2)


class Serving:
    """One daemon's serving side over a buffer: what a daemon restart rebuilds from scratch."""

    def __init__(self, buffer: DuckDBBuffer, vllm: LoraEndpoints, base_model: Path) -> None:
        self.router = Router("base", "evolvd")
        self.registry = AdapterRegistry(buffer)
        self.swapper = HotSwapper(
            vllm,  # type: ignore[arg-type]
            self.router,
            self.registry,
            ServingMetrics.create(new_registry()),
            base_model,
            64,
            "Hi",
        )


@pytest.fixture
def serving(tmp_path: Path, base_model: Path) -> Iterator[tuple[Serving, LoraEndpoints, DuckDBBuffer]]:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    vllm = LoraEndpoints()
    yield Serving(buffer, vllm, base_model), vllm, buffer
    buffer.close()


def _promote_both(s: Serving, adapters: tuple[Path, Path]) -> tuple[str, str]:
    """Register both, promote the first, then the second: second live, first previous."""
    first, second = (s.swapper.register(p) for p in adapters)
    s.swapper.promote(first)
    s.swapper.promote(second)
    return first, second


def _statuses(registry: AdapterRegistry) -> dict[str, str]:
    return {a["name"]: a["status"] for a in registry.all()}


def test_a_live_adapter_that_fails_to_reload_falls_back_only_to_one_that_loaded(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path]
) -> None:
    s, vllm, _ = serving
    first, second = _promote_both(s, two_adapters)
    assert (s.router.routing.live, s.router.routing.previous) == (second, first)

    vllm.restart()
    vllm.refuse = {second}
    s.swapper.reapply()
    assert (s.router.routing.live, s.router.routing.previous) == (first, None)
    assert s.registry.live() == first, "the registry must name the adapter that serves"
    assert _statuses(s.registry) == {first: "live", second: "rolled_back"}
    assert s.router.resolve("evolvd") == first and first in vllm.loaded

    vllm.restart()
    vllm.refuse = {first}  # now nothing that was routed loads: the base model serves, nothing is live
    s.swapper.reapply()
    assert s.router.routing.live is None and s.router.resolve("evolvd") == "base"
    assert s.registry.live() is None
    assert _statuses(s.registry) == {first: "rolled_back", second: "rolled_back"}


def test_both_failing_never_routes_to_an_adapter_vllm_does_not_hold(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path]
) -> None:
    s, vllm, _ = serving
    first, second = _promote_both(s, two_adapters)
    vllm.restart()
    vllm.refuse = {first, second}
    s.swapper.reapply()
    # Before: the alias went to `first`, which vLLM no longer held, and no row was live.
    assert s.router.routing.live is None and s.router.routing.previous is None
    assert s.router.resolve("evolvd") == "base"
    assert s.registry.live() is None


def test_a_restarted_daemon_keeps_the_previous_adapter_for_rollback(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path], base_model: Path
) -> None:
    s, vllm, buffer = serving
    first, second = _promote_both(s, two_adapters)

    # The daemon restarts: routing is rebuilt from the registry and the swap log.
    again = Serving(buffer, vllm, base_model)
    vllm.restart()
    live = again.registry.live()
    assert live == second
    again.swapper.restore(live, again.registry.previous_live())
    assert (again.router.routing.live, again.router.routing.previous) == (second, first)
    result = again.swapper.rollback("operator rollback after restart")
    assert (result.from_adapter, result.to_adapter) == (second, first), "rollback must not go to the base"
    assert again.registry.live() == first
    assert again.registry.previous_live() is None  # after a rollback there is nothing to go back to

    # A previous adapter that no longer loads is dropped, and the live one still serves.
    third = Serving(buffer, vllm, base_model)
    third.swapper.promote(second, "operator promote")  # second is rolled back: promote takes any row
    vllm.restart()
    vllm.refuse = {first}
    third_again = Serving(buffer, vllm, base_model)
    third_again.swapper.restore(second, third_again.registry.previous_live())
    assert (third_again.router.routing.live, third_again.router.routing.previous) == (second, None)
