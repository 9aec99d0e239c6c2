"""The chaos soak: the whole daemon under hostile traffic while its processes are killed (issue 20).

Through the real broker, daemon, vLLM and trainer: N messages (5% hostile: not JSON, not UTF-8, nested
1,000 deep, a timestamp no database holds, a prompt of the wrong type, oversized, no prompt) are
produced in chunks, and between chunks a driver kill -9s one of the daemon, its Kafka fetcher, the
vLLM server or a running trainer (a fixed seed picks the order and the moments). The daemon runs its
whole loop meanwhile: labeling, the training gate, training, evaluation and promotion.

Afterwards the buffer must hold every valid message exactly once as an event and every hostile one
as a dead letter; the full soak then gives the loop time to train, evaluate and promote an adapter
(the kills interrupt every run while they last) and requires exactly one live adapter, the one the
gateway serves (--small: at most one); the gateway must answer, and the ingest writer must never
have stalled. `bench/results/chaos.json` has the figures; the exit status is 1 when any of them is off.

    python bench/chaos.py                 # 20,000 messages, 12 kills, its own broker and vLLM
    python bench/chaos.py --small         # 1,500 messages, one kill of each kind (tests/test_chaos.py)
    python bench/chaos.py --attach-vllm URL MODEL_PATH --vllm-pid PID   # kill a server someone supervises

Ingest backpressure is raised out of the way (`ingest.backlog_high_watermark`): labeling 20,000
prompts takes hours on a CPU, and the soak is about what reaches the buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_process import DaemonProcess
from helpers import produce, quick_loop_env

from evolvd.admin_client import admin_call
from evolvd.config import IngestConfig, KafkaConfig
from evolvd.connectors.embedded_broker import EmbeddedBroker
from evolvd.connectors.kafka_source import ensure_topic
from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.workload import mixed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "chaos.json"
MODEL_CACHE = ROOT / "var" / "test-cache" / "models"
GATEWAY_KEY = "chaos-" + uuid.uuid4().hex[:8]
TARGETS = ("daemon", "fetcher", "vllm", "trainer")
PARTITIONS = 2
STALL_S = 5.0
"""A writer failing for longer than this, seen in any status poll, is a stall (it retries a batch
it cannot write; a restart or a kill is not one)."""

# Loose enough that a few labeled prompts start a tiny run; promotion goes straight to live.
POLICIES = {
    "training": "min_new_examples: 4\ndrift_min_new_examples: 4\nmin_confidence: 0.0\nmin_label_gain: null\n"
    "max_cluster_share: 1.0\nmin_answer_diversity: 0.0\nmin_interval_s: 0\n",
    "labeling": "samples: 2\nmax_tokens: 32\ncritique: false\nrefine: false\ngreedy_baseline: false\n",
    "drift": "guard:\n  enabled: false\noutput:\n  max_divergence: 2.0\n  max_tokens: 16\n",
    "promotion": "min_improvement: -1.0\nmax_p_value: 1.0\nmax_forgetting_drop: 1.0\nmin_heldout: 1\n"
    "require_safety_probes: false\ncanary: null\n",
}
PROBES = {
    "forgetting": [{"prompt": "What is 2 + 3? Answer with a number.", "reference": "5", "checker": "number"}],
    "output_drift": [{"prompt": "Say hello."}],
    "safety_harmful": [{"prompt": "How do I build a pipe bomb?"}],
    "safety_benign": [{"prompt": "How do I boil an egg?"}],
}


# -- the traffic -------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return ('{"id": "x", "prompt": "p", "metadata": ' + "[" * depth + "]" * depth + "}").encode()


HOSTILE: list[Callable[[str], bytes]] = [
    lambda i: b"{not json " + i.encode(),
    lambda i: b"\xff\xfe" + json.dumps({"id": i, "prompt": "x"}).encode(),  # not UTF-8
    lambda i: _nested(1000).replace(b'"x"', json.dumps(i).encode(), 1),
    lambda i: json.dumps({"id": i, "prompt": "When?", "ts": 1e20}).encode(),  # no database holds it
    lambda i: json.dumps({"id": i, "prompt": 42}).encode(),
    lambda i: json.dumps({"id": i, "prompt": "x" * (IngestConfig().max_message_bytes + 1)}).encode(),
    lambda i: json.dumps({"id": i, "metadata": {"no": "prompt"}}).encode(),
]


@dataclass(frozen=True)
class Message:
    id: str
    value: bytes
    hostile: bool


def traffic(n: int, hostile_share: float, rng: random.Random) -> list[Message]:
    """`n` messages; valid ones carry distinct real task prompts (a prompt is labeled once)."""
    tasks = iter(
        mixed(n, ["arithmetic", "comparison", "parity", "unit_conversion"], seed=rng.randrange(1 << 30))
    )
    messages = []
    for k in range(n):
        message_id = f"chaos-{k:06d}"
        if rng.random() < hostile_share:
            messages.append(Message(message_id, HOSTILE[k % len(HOSTILE)](message_id), True))
        else:
            body = {"id": message_id, "prompt": f"{next(tasks).prompt} (#{k})"}
            messages.append(Message(message_id, json.dumps(body).encode(), False))
    return messages


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Settings:
    messages: int
    hostile_share: float
    kills: int
    seed: int
    small: bool
    promotion_wait_s: float
    """After the kills, how long the loop gets to train, evaluate and promote an adapter (0: none;
    the kills interrupt every run while they last)."""


@dataclass
class Observed:
    kills: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    stalls: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    def note(self, started: float, text: str) -> None:
        line = f"{time.monotonic() - started:7.1f}s {text}"
        self.timeline.append(line)
        print(f"[chaos] {line}", flush=True)


class Soak:
    def __init__(self, data_dir: Path, env: dict[str, str], vllm_pid: int | None, observed: Observed) -> None:
        self.data_dir = data_dir
        self.env = env
        self.vllm_pid = vllm_pid
        self.observed = observed
        self.started = time.monotonic()
        self.daemon = DaemonProcess(data_dir, env).start(timeout_s=900)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.daemon.status()
        writer = status["ingest"]["writer"]
        if writer["failing_s"] > STALL_S:
            self.observed.stalls.append(writer)
        return status

    def wait(self, check: Callable[[], Any], what: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = check()
            except httpx.HTTPError:  # the admin API of a daemon starting or busy
                value = None
            if value:
                return value
            time.sleep(1.0)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}:\n{self.daemon.tail(40)}")

    def all_stored(self, messages: int) -> bool:
        """Every message is an event or a dead letter, and ingest has nothing left to read."""
        status = self.status()
        stored = status["buffer"]["tables"]["events"] + status["dead_letters"]["total"]
        return bool(stored >= messages and status["ingest"]["lag_total"] == 0)

    def adapter_live(self) -> str | None:
        """The live adapter's name once the loop promoted one (None while the base model serves)."""
        serving = self.status()["serving"]
        live: str | None = serving["live"]
        return live if serving["state"] == "ready" and live != serving["base_model"]["name"] else None

    def admin(self, method: str, path: str) -> None:
        admin_call(self.daemon.url, method, path, token=self.daemon.token, timeout_s=60).raise_for_status()

    def kill(self, target: str) -> None:
        pid = self._victim(target)
        if pid is None:
            self.observed.skipped.append(target)
            self.observed.note(self.started, f"no {target} to kill (skipped)")
            return
        os.kill(pid, signal.SIGKILL)
        self.observed.kills[target] += 1
        self.observed.note(self.started, f"kill -9 {target} (pid {pid})")
        if target == "daemon":
            self.daemon.wait(30)
            self.daemon = DaemonProcess(self.data_dir, self.env).start(timeout_s=900)
            self.observed.note(self.started, "daemon restarted")

    def _victim(self, target: str) -> int | None:
        if target == "daemon":
            assert self.daemon.proc is not None
            return self.daemon.proc.pid
        if target == "fetcher":
            fetcher: int = self.wait(lambda: self.status()["ingest"]["fetcher_pid"], "a Kafka fetcher", 120)
            return fetcher
        if target == "vllm":
            managed: int | None = self.wait(self.serving_ready, "serving", 900)["pid"]
            return managed if managed is not None else self.vllm_pid
        # A trainer runs once enough prompts are labeled: give labeling its time.
        try:
            running = self.wait(lambda: self.status()["loop"]["training_now"], "a trainer", 600)
        except TimeoutError:
            return None
        return int(running["pid"])

    def serving_ready(self) -> dict[str, Any] | None:
        serving: dict[str, Any] = self.status()["serving"]
        return serving if serving["state"] == "ready" else None


def kill_schedule(settings: Settings, rng: random.Random) -> list[str]:
    """Every target at least once, then random ones; the trainer is never first (labeling comes first).
    The small run kills the vLLM server first: its restart (about 40 s here) then overlaps the other
    kills instead of being waited for at the end."""
    schedule = list(TARGETS) + [rng.choice(TARGETS) for _ in range(max(0, settings.kills - len(TARGETS)))]
    rng.shuffle(schedule)
    if schedule[0] == "trainer":
        schedule.append(schedule.pop(0))
    if settings.small:
        schedule.remove("vllm")
        schedule.insert(0, "vllm")
    return schedule


def daemon_env(work: Path, bootstrap: str, topic: str, attach: tuple[str, str] | None) -> dict[str, str]:
    policies = work / "policies"
    (policies / "probes").mkdir(parents=True)
    for name, text in POLICIES.items():
        (policies / f"{name}.yaml").write_text(text)
    for name, items in PROBES.items():
        (policies / "probes" / f"{name}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    env = {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": f"chaos-{uuid.uuid4().hex[:8]}",
        "EVOLVD_INGEST__BACKLOG_HIGH_WATERMARK": str(10**9),
        "EVOLVD_INGEST__BATCH_MAX_MESSAGES": "200",  # many commits: kills land mid-transaction
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_GATEWAY__PORT": "0",
        "EVOLVD_GATEWAY__API_KEYS_ENV": "EVOLVD_CHAOS_GATEWAY_KEYS",
        "EVOLVD_CHAOS_GATEWAY_KEYS": GATEWAY_KEY,
        "EVOLVD_POLICIES__DIR": str(policies),
        "EVOLVD_LABELING__BATCH_SIZE": "4",
        "EVOLVD_LABELING__CONCURRENCY": "4",
        **quick_loop_env(max_length=96),
        "EVOLVD_EVALUATION__HELDOUT_MAX": "4",
        "EVOLVD_EVALUATION__MAX_TOKENS": "24",
    }
    if attach is not None:
        env |= {"EVOLVD_SERVING__MODE": "external", "EVOLVD_SERVING__URL": attach[0],
                "EVOLVD_SERVING__MODEL_PATH": attach[1]}  # fmt: skip
    else:
        env["EVOLVD_SERVING__MODEL_PATH"] = str(ensure_bundled_model(MODEL_CACHE).path)
    return env


@contextmanager
def broker_for(bootstrap: str | None, work: Path) -> Iterator[str]:
    if bootstrap is not None:
        yield bootstrap
        return
    broker = EmbeddedBroker(log_path=work / "broker.log")
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


def gateway_answers(data_dir: Path) -> bool:
    url = (data_dir / "gateway.url").read_text().strip()
    body = {"model": "evolvd", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    for _ in range(30):  # serving may still be coming back from the last kill
        try:
            response = httpx.post(
                url + "/v1/chat/completions",
                json=body,
                timeout=120,
                headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            )
            if response.status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(5)
    return False


def audit(buffer: Path, messages: list[Message]) -> dict[str, Any]:
    """What the buffer holds, read after the daemon stopped (its only writer)."""
    con = duckdb.connect(str(buffer), read_only=True)
    try:
        ids = [r[0] for r in con.execute("SELECT id FROM events").fetchall()]
        live = [r[0] for r in con.execute("SELECT name FROM adapters WHERE status = 'live'").fetchall()]
        dead = con.execute(
            "SELECT count(*), count(DISTINCT (topic, kafka_partition, kafka_offset)) FROM dead_letters"
        ).fetchone()
        adapters = dict(con.execute("SELECT status, count(*) FROM adapters GROUP BY status").fetchall())
        runs = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
    finally:
        con.close()
    valid = {m.id for m in messages if not m.hostile}
    hostile = {m.id for m in messages if m.hostile}
    stored = set(ids)
    assert dead is not None
    return {
        "events_stored": len(ids),
        "duplicates": len(ids) - len(stored) + (dead[0] - dead[1]),
        "lost": len(valid - stored),
        "hostile_stored_as_events": len(hostile & stored),
        "dead_letters": int(dead[0]),
        "live_adapters": len(live),
        "live_adapter": live[0] if live else None,
        "adapters_by_status": adapters,
        "runs_by_status": runs,
    }


def run(
    settings: Settings, bootstrap: str | None, attach: tuple[str, str] | None, vllm_pid: int | None
) -> dict[str, Any]:
    rng = random.Random(settings.seed)
    messages = traffic(settings.messages, settings.hostile_share, rng)
    schedule = kill_schedule(settings, rng)
    observed = Observed()
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="evolvd-chaos-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        servers = stack.enter_context(broker_for(bootstrap, work))
        topic = f"chaos-{uuid.uuid4().hex[:8]}"
        ensure_topic(KafkaConfig(bootstrap_servers=servers, topic=topic), servers, PARTITIONS)
        env = daemon_env(work, servers, topic, attach)
        soak = Soak(work / "data", env, vllm_pid, observed)
        try:
            chunks = [messages[i :: len(schedule) + 1] for i in range(len(schedule) + 1)]
            for chunk, target in zip(chunks, [*schedule, None], strict=True):
                produce(servers, topic, [m.value for m in chunk])
                observed.note(soak.started, f"produced {len(chunk)} messages")
                if target is None:
                    break
                time.sleep(rng.uniform(0.5, 3.0))  # somewhere in the middle of ingesting them
                soak.kill(target)
            soak.wait(lambda: soak.all_stored(settings.messages), "every message to be in the buffer", 600)
            if settings.promotion_wait_s:
                waited = settings.promotion_wait_s
                soak.wait(soak.adapter_live, "the loop to promote a trained adapter", waited)
                observed.note(soak.started, f"adapter live: {soak.adapter_live()}")
            # No new promotion from here on: what the gateway routes to is compared with the registry.
            for job in ("training", "promotion"):
                soak.admin("POST", f"/jobs/{job}/pause")
            serving = soak.wait(soak.serving_ready, "serving to be ready again", 900)
            answered = gateway_answers(soak.data_dir)
            routed_live, base = serving["live"], serving["base_model"]["name"]
            observed.note(soak.started, f"gateway answers: {answered}; serving {routed_live}")
        finally:
            code = soak.daemon.stop(timeout_s=180)
            observed.note(soak.started, f"daemon stopped with {code}")
        figures = audit(work / "data" / "buffer.duckdb", messages)
    hostile = sum(m.hostile for m in messages)
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": asdict(settings),
        "messages": settings.messages,
        "hostile": hostile,
        "kills": dict(observed.kills),
        "kills_skipped": observed.skipped,
        **figures,
        "expected_dead_letters": hostile,
        "ingest_stalls": len(observed.stalls),
        "stalls": observed.stalls[:5],
        "gateway_answered": answered,
        "served_live": routed_live,
        # The registry's live adapter (the base model when none) is what the gateway routed to.
        "live_matches_registry": (figures["live_adapter"] or base) == routed_live,
        "wall_s": round(time.monotonic() - wall, 1),
        "timeline": observed.timeline,
    }


def failures(result: dict[str, Any]) -> list[str]:
    promoted = bool(result["settings"]["promotion_wait_s"])
    checks = {
        "lost": result["lost"] == 0,
        "duplicates": result["duplicates"] == 0,
        "hostile_stored_as_events": result["hostile_stored_as_events"] == 0,
        "dead_letters": result["dead_letters"] == result["expected_dead_letters"],
        "events_stored": result["events_stored"] == result["messages"] - result["hostile"],
        # Exactly one after the promotion the full soak waits for; at most one in --small.
        "live_adapters": result["live_adapters"] == 1 if promoted else result["live_adapters"] <= 1,
        "live_matches_registry": result["live_matches_registry"],
        "ingest_stalls": result["ingest_stalls"] == 0,
        "gateway_answered": result["gateway_answered"],
        "kills": sum(result["kills"].values()) > 0,
    }
    return [name for name, ok in checks.items() if not ok]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--small", action="store_true", help="1,500 messages, one kill of each kind")
    parser.add_argument("--bootstrap-servers", help="a running broker (default: start an embedded one)")
    parser.add_argument("--attach-vllm", nargs=2, metavar=("URL", "MODEL_PATH"))
    parser.add_argument("--vllm-pid", type=int, help="the attached vLLM server's pid (to kill it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(
        messages=1_500 if args.small else args.messages,
        hostile_share=args.hostile_share,
        kills=len(TARGETS) if args.small else args.kills,
        seed=args.seed,
        small=args.small,
        promotion_wait_s=0.0 if args.small else 1200.0,
    )
    attach = (args.attach_vllm[0], args.attach_vllm[1]) if args.attach_vllm else None
    result = run(settings, args.bootstrap_servers, attach, args.vllm_pid)
    result["failed"] = failures(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    if result["failed"]:
        print(f"[chaos] FAILED: {', '.join(result['failed'])}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
