"""The hot-swap protocol: validate → load under a unique name → probe → flip the alias → tidy up.

The live adapter keeps serving until the very flip, and the previous one stays loaded so a
rollback is only a flip back. Every attempt, good or bad, is a swap row and a metric.

An adapter that is already loaded (the loop's candidate, loaded for its evaluation; a canary; the
previous adapter a rollback returns to) answered its probe when it was loaded into this serving
process, and a restart of that process empties the loaded set (`reapply` loads and probes again). Its
swap re-checks its files and flips: it does not wait behind the requests queued in vLLM for a second
probe, which under load took up to 1.3 s of a 3.5 s p95 (bench/serving.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

from evolvd.adapter_folder import AdapterRejectedError, check_adapter, read_manifest
from evolvd.connectors.vllm_client import ProbeResult, VLLMError
from evolvd.metrics import ServingMetrics
from evolvd.serving.adapter_store import AdapterStore
from evolvd.serving.registry import AdapterRegistry, AdapterRow, AdapterStatus
from evolvd.serving.routing import Router, Routing, RoutingNotPublishedError

logger = logging.getLogger("evolvd.hotswap")


class AdapterEndpoints(Protocol):
    """Where adapters are served: one vLLM server (evolvd.connectors.vllm_client.VLLMClient) or a fleet
    of replicas sharing an adapter directory (evolvd.serving.fleet.ReplicaFleet)."""

    def load_adapter(self, name: str, path: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def probe(self, model: str, prompt: str, max_tokens: int = 1) -> ProbeResult: ...


class SwapError(RuntimeError):
    """A swap did not happen; the live adapter is unchanged. The message is the recorded reason."""


@dataclass(frozen=True)
class SwapResult:
    action: str
    from_adapter: str | None
    to_adapter: str | None
    duration_ms: float


def adapter_name(base_name: str, version: int, weights_sha256: str) -> str:
    """Unique per version and content: `<base>-v<N>-<hash8>` (vLLM caches by name: never reuse one)."""
    return f"{base_name}-v{version}-{weights_sha256[:8]}"


class HotSwapper:
    def __init__(
        self,
        client: AdapterEndpoints,
        router: Router,
        registry: AdapterRegistry,
        store: AdapterStore,
        metrics: ServingMetrics,
        base_model_path: Path,
        max_rank: int,
        probe_prompt: str,
    ) -> None:
        self._client = client
        self._router = router
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._base_model_path = base_model_path
        self._max_rank = max_rank
        self._probe_prompt = probe_prompt
        self._loaded: set[str] = set()
        self._lock = threading.Lock()  # one swap at a time; requests never wait on it
        self._show_live()

    @property
    def loaded(self) -> set[str]:
        """Adapters loaded in the serving process."""
        return set(self._loaded)

    # -- registration --------------------------------------------------------------------------

    def register(
        self, path: Path, parent: str | None = None, run_id: str | None = None, gated: bool = False
    ) -> str:
        """Copy an adapter folder into the daemon's store, validate the copy and add it to the registry
        as a candidate; returns its name. What serves is the copy: the source may change or go.
        `gated`: the loop evaluates it and the promotion policy decides, as for a trained candidate."""
        try:
            staged = self._store.stage(path)
        except AdapterRejectedError as exc:
            self.refuse_registration(str(exc))
        try:
            info = check_adapter(staged, self._base_model_path, self._max_rank)
        except AdapterRejectedError as exc:
            self._store.discard(staged)
            self.refuse_registration(str(exc))
        with self._lock:  # version numbers are handed out one at a time
            version = self._registry.next_version()
            name = adapter_name(self._router.routing.base, version, info.weights_sha256)
            manifest = {
                **read_manifest(staged),  # run, base model and snapshot hashes, parent, metrics
                "rank": info.rank,
                "target_modules": list(info.target_modules),
                "weights_sha256": info.weights_sha256,
                "registered_from": str(path.resolve()),
            }
            kept = self._store.keep(staged, name)
            self._registry.add(name, version, kept, manifest, parent, run_id, gated)
        logger.info("registered adapter %s from %s (copied to %s)", name, path, kept)
        return name

    def refuse_registration(self, reason: str) -> NoReturn:
        """Record a refused registration (swap log, metric) and raise SwapError with the reason."""
        self._registry.record_swap("register", "rejected", None, None, reason, None)
        self._metrics.swaps.labels("register", "rejected").inc()
        raise SwapError(reason)

    # -- swaps ---------------------------------------------------------------------------------

    def promote(self, name: str, reason: str = "manual promote") -> SwapResult:
        with self._lock:
            started = time.perf_counter()
            before = self._router.routing
            self._load_candidate(
                "promote", name, before.live, f"{name} is already live" if name == before.live else None
            )
            canary = None if before.canary == name else before.canary
            _, after = self._flip("promote", live=name, previous=before.live, canary=canary)
            duration_ms = (time.perf_counter() - started) * 1000
            self._after_flip("promote", before.live, name, reason, duration_ms)
            self._registry.set_live(name, reason)
            self._unload_all_but(after.resident())
            return SwapResult("promote", before.live, name, duration_ms)

    def start_canary(self, name: str, share: float, reason: str = "manual canary") -> SwapResult:
        """Load and probe `name`, then send `share` of the alias traffic to it (live keeps the rest)."""
        with self._lock:
            started = time.perf_counter()
            before = self._router.routing
            invalid = None
            if name == before.live:
                invalid = f"{name} is live; a canary must be another adapter"
            elif not 0.0 < share <= 1.0:
                invalid = f"canary share must be in (0, 1], got {share}"
            self._load_candidate("canary", name, before.live, invalid)
            self._flip("canary", canary=name, canary_share=share)
            duration_ms = (time.perf_counter() - started) * 1000
            self._after_flip("canary", before.canary, name, f"{reason} ({share:.0%} of traffic)", duration_ms)
            self._registry.set_status(name, AdapterStatus.CANARY, f"{share:.0%} of traffic")
            if before.canary is not None and before.canary != name:
                self._registry.set_status(
                    before.canary, AdapterStatus.CANDIDATE, f"canary replaced by {name}"
                )
            return SwapResult("canary", before.canary, name, duration_ms)

    def stop_canary(self, reason: str = "canary ended") -> SwapResult:
        with self._lock:
            before = self._router.routing
            if before.canary is None:
                raise SwapError("no canary is running")
            self._flip("canary", canary=None, canary_share=0.0)
            self._after_flip("canary", before.canary, None, reason, 0.0)
            self._registry.set_status(before.canary, AdapterStatus.CANDIDATE, reason)
            self._unload_all_but(self._router.routing.resident())
            return SwapResult("canary", before.canary, None, 0.0)

    def rollback(self, reason: str = "manual rollback") -> SwapResult:
        with self._lock:
            started = time.perf_counter()
            before = self._router.routing
            target = before.previous
            if before.live is None:
                self._metrics.rollbacks.labels("rejected").inc()
                raise SwapError("nothing to roll back: the base model is serving")
            try:
                if target is not None:
                    self._reload(target)
            except (SwapError, AdapterRejectedError, VLLMError) as exc:
                self._reject("rollback", before.live, target, f"previous adapter does not serve: {exc}")
                self._metrics.rollbacks.labels("failed").inc()
                raise SwapError(str(exc)) from exc
            self._flip("rollback", live=target, previous=None)
            duration_ms = (time.perf_counter() - started) * 1000
            self._after_flip("rollback", before.live, target, reason, duration_ms)
            self._metrics.rollbacks.labels("ok").inc()
            changes: list[tuple[str, AdapterStatus, str | None]] = [
                (before.live, AdapterStatus.ROLLED_BACK, reason)
            ]
            if target is not None:
                changes.append((target, AdapterStatus.LIVE, f"restored by rollback: {reason}"))
            self._registry.set_statuses(changes)  # one transaction: never two live adapters, nor a lost one
            # The rolled-back adapter stays loaded until the next swap tidies up; nothing needs it now.
            return SwapResult("rollback", before.live, target, duration_ms)

    def restore(self, live: str, previous: str | None, reason: str = "restored after daemon restart") -> None:
        """After a daemon restart: serve `live` again, with `previous` loaded for rollback as before the
        restart (routing lives in memory; the registry and swap log are what survives). A previous
        adapter that no longer loads is dropped: rollback then goes to the base model."""
        with self._lock:
            started = time.perf_counter()
            self._load_candidate("restore", live, None, None)
            kept = None
            if previous is not None and previous != live:
                try:
                    self._reload(previous)
                    kept = previous
                except (SwapError, AdapterRejectedError, VLLMError) as exc:
                    reason_lost = f"previous adapter not restored: {exc}"
                    self._reject("restore", live, previous, reason_lost, mark=False)
            self._router.update(live=live, previous=kept)
            self._after_flip("restore", kept, live, reason, (time.perf_counter() - started) * 1000)

    def load_for_evaluation(self, name: str) -> None:
        """Load and probe a candidate so it can be queried by name; routing is unchanged."""
        with self._lock:
            self._load_candidate("evaluate", name, self._router.routing.live, None)

    def release(self, name: str) -> None:
        """Unload an adapter nothing routes to any more (a rejected candidate), freeing its slot."""
        with self._lock:
            if name in self._loaded and name not in self._router.routing.resident():
                self._unload(name)

    def reapply(self) -> None:
        """After a serving restart: load what the routing names again. An adapter that fails to load
        is routed to no more: a live one falls back to the previous adapter only if that one loaded
        (else to the base model), and the registry says which adapter is live now."""
        with self._lock:
            self._loaded.clear()
            routing = self._router.routing
            failed: dict[str, str] = {}
            for name in dict.fromkeys(n for n in (routing.live, routing.previous, routing.canary) if n):
                started = time.perf_counter()
                try:
                    self._reload(name)
                    self._after_flip(
                        "reapply", None, name, "serving restarted", (time.perf_counter() - started) * 1000
                    )
                except (SwapError, AdapterRejectedError, VLLMError) as exc:
                    failed[name] = f"failed to reload after restart: {exc}"
                    self._reject("reapply", None, name, f"could not restore after restart: {exc}", mark=False)
            if failed:
                self._drop_unloadable(routing, failed)

    def _drop_unloadable(self, routing: Routing, failed: dict[str, str]) -> None:
        previous = routing.previous if routing.previous not in failed else None
        changes: dict[str, object] = {}
        statuses: list[tuple[str, AdapterStatus, str | None]] = []
        if routing.canary in failed:
            changes.update(canary=None, canary_share=0.0)
            statuses.append(
                (routing.canary, AdapterStatus.CANDIDATE, f"canary stopped: {failed[routing.canary]}")
            )
        if routing.live in failed:
            changes.update(live=previous, previous=None)
            statuses.append((routing.live, AdapterStatus.ROLLED_BACK, failed[routing.live]))
            self._registry.record_swap("rollback", "ok", routing.live, previous, failed[routing.live], None)
            self._metrics.rollbacks.labels("ok").inc()
            if previous is not None:
                statuses.append(
                    (previous, AdapterStatus.LIVE, f"live again: {routing.live} {failed[routing.live]}")
                )
            logger.error(
                "live adapter %s could not be reloaded after the serving restart; %s serves now",
                routing.live,
                previous or "the base model",
            )
        elif routing.previous in failed:
            changes.update(previous=None)  # a rollback would have nowhere loaded to go
        self._router.update(**changes)
        self._registry.set_statuses(statuses)  # one transaction: never two live adapters, nor none
        self._show_live()

    # -- steps ---------------------------------------------------------------------------------

    def _flip(self, action: str, **changes: object) -> tuple[Routing, Routing]:
        """The router's change, published first; one that cannot be published is a failed swap."""
        try:
            return self._router.update(**changes)
        except RoutingNotPublishedError as exc:
            self._metrics.swaps.labels(action, "rejected").inc()
            raise SwapError(str(exc)) from exc

    def _load_candidate(self, action: str, name: str, live: str | None, invalid: str | None) -> None:
        """Load and probe a registered adapter; otherwise record the rejection and raise SwapError."""
        row = self._registry.get(name)
        try:
            if row is None:
                raise SwapError(f"no adapter named {name} in the registry")
            if invalid is not None:
                raise SwapError(invalid)
            self._load_and_probe(row)
        except (SwapError, AdapterRejectedError, VLLMError) as exc:
            self._reject(action, live, name, str(exc), mark=row is not None)
            raise SwapError(str(exc)) from exc

    def _reload(self, name: str) -> None:
        """Load and probe a registered adapter again (after a restart); no status changes."""
        row = self._registry.get(name)
        if row is None:
            raise SwapError(f"{name} is not in the registry")
        self._load_and_probe(row)

    def _load_and_probe(self, row: AdapterRow) -> None:
        name = row.name
        # The registry's copy, with the weights hashed at registration: a changed copy is refused.
        registered = str(row.manifest.get("weights_sha256", ""))
        check_adapter(row.path, self._base_model_path, self._max_rank, registered)
        if name in self._loaded:
            return  # probed when it was loaded into this serving process (module docstring)
        self._client.load_adapter(name, str(row.path))
        self._loaded.add(name)
        try:
            self._client.probe(name, self._probe_prompt)
        except VLLMError:
            self._unload(name)
            raise

    def _unload(self, name: str) -> None:
        try:
            self._client.unload_adapter(name)
        except VLLMError as exc:
            logger.warning("could not unload %s: %s", name, exc)
        self._loaded.discard(name)

    def _unload_all_but(self, keep: set[str]) -> None:
        for name in sorted(self._loaded - keep):
            self._unload(name)

    def _after_flip(
        self, action: str, old: str | None, new: str | None, reason: str, duration_ms: float
    ) -> None:
        self._registry.record_swap(action, "ok", old, new, reason, duration_ms)
        self._metrics.swaps.labels(action, "ok").inc()
        if action != "reapply":
            self._metrics.swap_seconds.observe(duration_ms / 1000)
        self._show_live()
        logger.info("%s: %s -> %s in %.0f ms (%s)", action, old or "base", new or "base", duration_ms, reason)

    def _show_live(self) -> None:
        """evolvd_live_adapter_info names what the public model resolves to (the base model too)."""
        self._metrics.live_adapter.clear()
        self._metrics.live_adapter.labels(self._router.routing.live_or_base).set(1)

    def _reject(
        self, action: str, live: str | None, candidate: str | None, reason: str, mark: bool = True
    ) -> None:
        self._registry.record_swap(action, "rejected", live, candidate, reason, None)
        self._metrics.swaps.labels(action, "rejected").inc()
        if mark and candidate is not None:
            self._registry.set_status(candidate, AdapterStatus.REJECTED, reason)
        logger.warning("%s of %s rejected, %s keeps serving: %s", action, candidate, live or "base", reason)
