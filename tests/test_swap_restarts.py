"""What the hot-swapper does when the serving process or the daemon restarts (issue 20, crash paths):
real adapters checked against the bundled base model, a real DuckDB registry and swap log, and a
stand-in for vLLM's LoRA endpoints that can refuse chosen adapters (the real server's restart path
is tests/test_serving.py's killed-vLLM test)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from adapters import make_adapter

from evolvd.adapter_folder import ADAPTER_WEIGHTS, AdapterRejectedError
from evolvd.buffer import DuckDBBuffer
from evolvd.connectors.vllm_client import ProbeResult, VLLMError
from evolvd.metrics import ServingMetrics, new_registry
from evolvd.serving.adapter_store import AdapterStore, check_import_path
from evolvd.serving.hotswap import HotSwapper, SwapError
from evolvd.serving.registry import AdapterRegistry
from evolvd.serving.routing import Router


class LoraEndpoints:
    """vLLM's load/unload/probe as the swapper uses them; `refuse` names adapters that fail to load."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.refuse: set[str] = set()
        self.probes: list[str] = []

    def load_adapter(self, name: str, path: str) -> None:
        if name in self.refuse:
            raise VLLMError(f"loading {name} failed: the adapter folder vanished", 400)
        self.loaded.add(name)

    def unload_adapter(self, name: str) -> None:
        self.loaded.discard(name)

    def probe(self, model: str, prompt: str, max_tokens: int = 1) -> ProbeResult:
        self.probes.append(model)
        if model not in self.loaded:
            raise VLLMError(f"The model `{model}` does not exist.", 404)
        return ProbeResult(model, "ready", 0.0)

    def restart(self) -> None:
        self.loaded.clear()


@pytest.fixture(scope="module")
def two_adapters(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("swap-adapters")
    return make_adapter(base_model, root / "a", seed=1), make_adapter(base_model, root / "b", seed=2)


class Serving:
    """One daemon's serving side over a buffer: what a daemon restart rebuilds from scratch."""

    def __init__(self, buffer: DuckDBBuffer, vllm: LoraEndpoints, base_model: Path, store: Path) -> None:
        self.router = Router("base", "evolvd")
        self.registry = AdapterRegistry(buffer)
        self.swapper = HotSwapper(
            vllm,
            self.router,
            self.registry,
            AdapterStore(store),
            ServingMetrics.create(new_registry()),
            base_model,
            64,
            "Hi",
        )


@pytest.fixture
def serving(tmp_path: Path, base_model: Path) -> Iterator[tuple[Serving, LoraEndpoints, DuckDBBuffer]]:
    buffer = DuckDBBuffer(tmp_path / "b.duckdb")
    vllm = LoraEndpoints()
    yield Serving(buffer, vllm, base_model, tmp_path / "adapters"), vllm, buffer
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
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer],
    two_adapters: tuple[Path, Path],
    base_model: Path,
    tmp_path: Path,
) -> None:
    s, vllm, buffer = serving
    first, second = _promote_both(s, two_adapters)

    # The daemon restarts: routing is rebuilt from the registry and the swap log.
    again = Serving(buffer, vllm, base_model, tmp_path / "adapters")
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
    third = Serving(buffer, vllm, base_model, tmp_path / "adapters")
    third.swapper.promote(second, "operator promote")  # second is rolled back: promote takes any row
    vllm.restart()
    vllm.refuse = {first}
    third_again = Serving(buffer, vllm, base_model, tmp_path / "adapters")
    third_again.swapper.restore(second, third_again.registry.previous_live())
    assert (third_again.router.routing.live, third_again.router.routing.previous) == (second, None)


def test_a_resident_adapter_swaps_without_a_second_probe_until_serving_restarts(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path]
) -> None:
    """The probe is what waits behind vLLM's queue under load: an adapter loaded (and probed) into this
    serving process, as the loop's evaluated candidate or a canary is, is promoted by a flip."""
    s, vllm, _ = serving
    first = s.swapper.register(two_adapters[0])
    second = s.swapper.register(two_adapters[1])
    s.swapper.promote(first)
    s.swapper.load_for_evaluation(second)
    assert vllm.probes == [first, second]  # each probed once, when loaded
    s.swapper.promote(second)
    s.swapper.rollback("back to the previous adapter, still loaded")
    assert vllm.probes == [first, second] and s.router.routing.live == first

    vllm.restart()  # a new serving process: nothing it holds has been probed
    s.swapper.reapply()
    assert vllm.probes == [first, second, first]
    s.swapper.promote(second)
    assert vllm.probes == [first, second, first, second]


def test_registration_serves_a_private_copy_and_refuses_weights_changed_after_it(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    s, vllm, _ = serving
    source = tmp_path / "operator" / "mine"
    shutil.copytree(two_adapters[0], source)
    name = s.swapper.register(source)
    row = s.registry.get(name)
    assert row is not None and row.path == tmp_path / "adapters" / name, "the registry names the copy"
    # The operator's folder changes (or is deleted) after registration: what serves is unaffected.
    shutil.copy(two_adapters[1] / ADAPTER_WEIGHTS, source / ADAPTER_WEIGHTS)
    s.swapper.promote(name)
    assert s.registry.live() == name
    shutil.rmtree(source)

    # The store's own copy is changed behind the daemon's back: no load of it happens again.
    other = s.swapper.register(two_adapters[1])
    shutil.copy(two_adapters[0] / ADAPTER_WEIGHTS, tmp_path / "adapters" / other / ADAPTER_WEIGHTS)
    with pytest.raises(SwapError, match="differ from the ones registered"):
        s.swapper.promote(other)
    assert s.registry.live() == name and other not in vllm.loaded
    assert _statuses(s.registry)[other] == "rejected"


def test_a_folder_with_symbolic_links_is_not_registered(
    serving: tuple[Serving, LoraEndpoints, DuckDBBuffer], two_adapters: tuple[Path, Path], tmp_path: Path
) -> None:
    s, _, _ = serving
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(two_adapters[0] / "adapter_config.json", linked / "adapter_config.json")
    (linked / ADAPTER_WEIGHTS).symlink_to(two_adapters[0] / ADAPTER_WEIGHTS)
    with pytest.raises(SwapError, match=re.escape(f"{ADAPTER_WEIGHTS} is a symbolic link")):
        s.swapper.register(linked)
    assert s.registry.all() == []
    assert s.registry.swaps()[0]["action"] == "register" and s.registry.swaps()[0]["outcome"] == "rejected"
    assert not [p for p in (tmp_path / "adapters").iterdir()], "no staged copy is left behind"


def test_an_operator_registers_only_from_the_import_root(tmp_path: Path) -> None:
    root = tmp_path / "import"
    (root / "ok").mkdir(parents=True)
    check_import_path(root / "ok", root)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(AdapterRejectedError, match=r"outside serving\.adapter_import_root"):
        check_import_path(tmp_path / "elsewhere", root)
    with pytest.raises(AdapterRejectedError, match=r"outside serving\.adapter_import_root"):
        check_import_path(root / ".." / "elsewhere", root)
    (root / "sneaky").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AdapterRejectedError, match="is a symbolic link"):
        check_import_path(root / "sneaky", root)
