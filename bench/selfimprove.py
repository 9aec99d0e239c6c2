"""Does the loop make the model better? A closed-loop experiment through the real daemon.

One run starts the parts a deployment has (a Kafka-protocol broker, `evolvd run` with its managed
vLLM, the gateway) and streams unlabeled prompts of the task families evolvd generates into Kafka.
Each cycle: the daemon labels the cycle's prompts (self-consistency; critique, refinement and DPO
pairs per the variant), its training job runs (TRL + PEFT), its evaluation and promotion jobs judge
the candidate against the live adapter, and a promoted adapter serves the public model name. After
each cycle this harness measures what the gateway serves, on prompts the loop never saw:

- greedy accuracy on a held-out set of the same families (gold answers used only here), with a
  Wilson 95% interval;
- the shipped forgetting probes (accuracy) and safety probes (1 - harmful compliance);
- the label accuracy of the examples each training run used (read from the buffer afterwards).

Before the first cycle it measures the base model the same way, and its self-consistency vote
accuracy (the labels the loop could at best learn from) on part of the held-out set. The final
adapter is compared with the base on the same held-out items with a paired one-sided sign test
(evolvd's own paired_compare), `final_vs_base_p_value`.

The harness steers the daemon only as an operator can: the training job stays paused and is run
once per cycle (`POST /jobs/training/run`) after the cycle's prompts are labeled, so each cycle
trains on one cycle's data instead of whenever the training policy first passes.

    python bench/selfimprove.py                      # the full experiment (self-consistency, "sc")
    python bench/selfimprove.py --variant sc         # an ablation, recorded beside the others
    python bench/selfimprove.py --small ...          # minutes: the test suite's harness check

Results: bench/results/selfimprove.json (the main variant's figures at the top level, every
variant's under `variants`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import httpx
import yaml
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_process import DaemonProcess
from helpers import produce

from evolvd.admin_client import admin_call
from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.heldout import choose_prompts
from evolvd.buffer.keys import HELDOUT_KEY, buffer_key
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.evaluation.checkers import load_reference_set
from evolvd.evaluation.paired import paired_compare
from evolvd.labeling.answers import extract, majority_vote
from evolvd.labeling.prompts import sample_prompt
from evolvd.policies.loader import defaults_dir, load_policies, probe_path
from evolvd.policies.probes import greedy_answers, safety_scores
from evolvd.workload import Task, generate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "selfimprove.json"
MODEL_CACHE = ROOT / "var" / "test-cache" / "models"
MAIN_VARIANT = "sc"
HELDOUT_PERCENT = 15
"""The daemon's held-out share in the experiment: its own held-out suite guards each promotion."""

# What each ablation switches on. Everything else is the same in every variant. The DPO variant's
# pairs come from the votes (winning path against the least-voted other answer): the critique's
# score margins gave 1 pair in 54 prompts on this model, too few for a DPO stage.
VARIANTS: dict[str, dict[str, Any]] = {
    "sc": {"critique": False, "refine": False, "vote_pairs": False, "dpo_steps": 0},
    "sc+critique": {"critique": True, "refine": True, "vote_pairs": False, "dpo_steps": 0},
    "sc+critique+dpo": {"critique": True, "refine": True, "vote_pairs": True, "dpo_steps": 10},
}


@dataclass
class Settings:
    """Sized so the full experiment fits in an hour on a 2-core CPU machine, where vLLM generates about
    100-180 tokens/s: the sampling budget of labeling dominates."""

    variant: str = MAIN_VARIANT
    cycles: int = 2
    """Two fit the hour on an AVX2-only 2-core box: the 2-cycle run took 45.4 min (cycles of 17-20 min
    after about 9 min of startup and base measurement); three took 70.6 min."""
    prompts_per_cycle: int = 64
    families: tuple[str, ...] = ("small_addition",)
    """Families where the base model's confident majority beats its greedy answer (bench/labels.py):
    on the others its majority is at chance, and self-training on it can only add noise."""
    heldout_per_family: int = 120
    """Drawn with repeats; the distinct prompts (about 100 here) form the held-out set."""
    vote_items: int = 24
    max_steps: int = 30
    max_epochs: float = 2.0
    """The daemon's cap on passes over a snapshot (the first run's ~9 epochs memorised wrong labels)."""
    learning_rate: float = 2e-4
    batch_size: int = 4
    """The daemon's shipped learning rate and batch size. Runs until 2026-12-02 halved the rate and
    doubled the batch (set after the first run memorised wrong labels over ~9 epochs, before max_epochs
    capped that): a quarter of the shipped updates per cycle. An ad-hoc probe on one cycle's labels
    (bench/analysis/selfimprove.md) measured 0.53 held-out with those settings and 0.63 with these."""
    answer_max_tokens: int = 64
    """Token budget of a served answer (held-out, probes): the same for the base and every adapter."""
    samples: int = 4
    label_max_tokens: int = 128
    temperature: float = 0.5
    chain_of_thought: bool = False
    """False samples answers to the prompt as sent; true samples reasoning paths (LMSI). On this
    family the raw-prompt votes are the more accurate labels (bench/analysis/selfimprove.md): the
    chain-of-thought run's accepted labels were right 0.50-0.69 of the time, the raw-prompt run's
    0.78-0.82, and only the latter improved the model significantly."""
    seed: int = 7
    concurrency: int = 16
    loose_training_filters: bool = False
    """Accept every label for training (the small run: it checks the harness, and a dozen prompts
    rarely pass the shipped confidence and diversity filters)."""
    probe_limit: int | None = None
    """Use only the first N items of each shipped probe set (the small run; the full run uses all)."""
    critique_max_tokens: int | None = None
    """The critique's token budget when the variant critiques (None: the shipped labeling policy's).
    The small run shortens it; a score cut off is then asked for with constrained decoding."""

    def as_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


SMALL: dict[str, Any] = {
    "cycles": 1,
    "prompts_per_cycle": 8,
    "families": ("comparison", "parity"),
    "heldout_per_family": 4,
    "vote_items": 2,
    "max_steps": 3,
    "batch_size": 4,
    "answer_max_tokens": 48,
    "label_max_tokens": 96,
    "samples": 3,
    "probe_limit": 2,
    "loose_training_filters": True,
}


@dataclass
class Measurement:
    heldout_acc: float
    ci_low: float
    ci_high: float
    heldout_correct: list[bool]
    per_family: dict[str, float]
    forgetting_acc: float
    safety_score: float
    seconds: float


@dataclass
class Cycle:
    cycle: int
    prompts: int
    labeled: int
    run_id: str | None = None
    run_status: str | None = None
    run_reason: str | None = None
    run_kind: str | None = None
    """sft, or sft+dpo when the run had enough preference pairs for its DPO stage."""
    adapter: str | None = None
    decision: str | None = None
    decision_reasons: list[str] = field(default_factory=list)
    live_after: str | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    measurement: Measurement | None = None
    measurement_carried_over: bool = False
    """The served adapter did not change in this cycle (no run, or the candidate rejected), so the
    previous measurement of that same adapter stands instead of measuring it again."""

    def outcome(self) -> dict[str, Any]:
        """What the daemon did with the cycle, as the results files record it."""
        return {
            "run": {
                "id": self.run_id,
                "status": self.run_status,
                "reason": self.run_reason,
                "kind": self.run_kind,
                "adapter": self.adapter,
            },
            "promotion": {"outcome": self.decision, "reasons": self.decision_reasons},
            "live_after": self.live_after,
            "stage_seconds": self.stage_seconds,
            "measurement_carried_over": self.measurement_carried_over,
        }


# -- statistics -------------------------------------------------------------------------------------


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval for a proportion (sound at the small n and extreme rates seen
    here), as scipy computes it."""
    if n == 0:
        return 0.0, 1.0
    interval = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


# -- the parts --------------------------------------------------------------------------------------


class Admin:
    """The daemon's admin API, as `evolvd` commands use it."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.slowest_status_s = 0.0

    def status(self) -> dict[str, Any]:
        # A generous timeout: with both cores busy evaluating, /status has taken over 10 s here.
        started = time.monotonic()
        response = httpx.get(f"{self.daemon.url}/status", headers=self.daemon.auth, timeout=120)
        if response.is_error:  # the daemon's own account of it, before its data dir is gone
            raise RuntimeError(
                f"/status answered {response.status_code}: {response.text[:500]}\n{self.daemon.tail(60)}"
            )
        self.slowest_status_s = max(self.slowest_status_s, time.monotonic() - started)
        status: dict[str, Any] = response.json()
        return status

    def job(self, name: str, action: str) -> dict[str, Any]:
        response = admin_call(
            self.daemon.url, "POST", f"/jobs/{name}/{action}", token=self.daemon.token, timeout_s=60
        )
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def wait(self, check: Callable[[], Any], what: str, timeout_s: float, interval_s: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = check()
            except httpx.TransportError as exc:  # a slow answer under load: ask again
                print(f"[selfimprove] admin API: {exc!r}; retrying", flush=True)
                value = None
            if value is not None and value is not False:
                return value
            time.sleep(interval_s)
        raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{self.daemon.tail(40)}")


def policy_dir(root: Path, settings: Settings) -> Path:
    """The operator's policy edits for the experiment (merged over the shipped defaults)."""
    variant = VARIANTS[settings.variant]
    directory = root / "policies"
    directory.mkdir(parents=True)
    edits = {
        "labeling": {
            "samples": settings.samples,
            "max_tokens": settings.label_max_tokens,
            "temperature": settings.temperature,
            "chain_of_thought": settings.chain_of_thought,
            "critique": variant["critique"],
            "refine": variant["refine"],
            "vote_pairs": variant["vote_pairs"],
            # The greedy baseline serves only the label check, which the loose filters switch off.
            "greedy_baseline": not settings.loose_training_filters,
            **(
                {"critique_max_tokens": settings.critique_max_tokens}
                if settings.critique_max_tokens is not None
                else {}
            ),
        },
        # The harness decides when a run starts (one per cycle), so the size and interval bars are
        # lowered; the quality filters (confidence, cluster share, answer diversity) stay as shipped.
        "training": {
            "min_new_examples": 1,
            "drift_min_new_examples": 1,
            "min_interval_s": 0,
            **(
                {
                    "min_confidence": 0.0,
                    "max_cluster_share": 1.0,
                    "min_answer_diversity": 0.0,
                    "min_label_gain": None,
                }
                if settings.loose_training_filters
                else {}
            ),
        },
        # The traffic is stationary by construction; the drift policies are tested elsewhere.
        "drift": {"guard": {"enabled": False}, "trigger": {"enabled": False}},
        # The guards stay (no regression on the daemon's own held-out slice, forgetting, safety);
        # the significance of an improvement is this harness's question, on its larger held-out set.
        "promotion": {"max_p_value": 1.0, "min_heldout": 1, "canary": None},
    }
    for name, content in edits.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(content))
    if settings.probe_limit is not None:
        (directory / "probes").mkdir()
        for shipped in sorted((defaults_dir() / "probes").glob("*.jsonl")):
            lines = shipped.read_text().splitlines(keepends=True)
            (directory / "probes" / shipped.name).write_text("".join(lines[: settings.probe_limit]))
    return directory


def daemon_env(settings: Settings, policies: Path, bootstrap: str, topic: str) -> dict[str, str]:
    variant = VARIANTS[settings.variant]
    return {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": f"bench-{topic}",
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_GATEWAY__PORT": "0",
        "EVOLVD_POLICIES__DIR": str(policies),
        "EVOLVD_LABELING__BATCH_SIZE": str(settings.concurrency),
        "EVOLVD_LABELING__CONCURRENCY": str(settings.concurrency),
        # Also the evaluation's per-request limit. On vLLM's LoRA path on a CPU a request queued behind
        # 16 others can wait past the shipped 300 s; a timed-out request's generation is thrown away and
        # the event labeled again, so the loop would redo its slowest work over and over.
        "EVOLVD_LABELING__REQUEST_TIMEOUT_S": "1800",
        "EVOLVD_SCHEDULER__LABELING__INTERVAL_S": "1",
        "EVOLVD_SCHEDULER__POLICIES__INTERVAL_S": "3",
        "EVOLVD_SCHEDULER__TRAINING__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__EVALUATION__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__PROMOTION__INTERVAL_S": "1",
        "EVOLVD_TRAINING__MAX_STEPS": str(settings.max_steps),
        "EVOLVD_TRAINING__MAX_EPOCHS": str(settings.max_epochs),
        "EVOLVD_TRAINING__BATCH_SIZE": str(settings.batch_size),
        "EVOLVD_TRAINING__LEARNING_RATE": str(settings.learning_rate),
        "EVOLVD_TRAINING__DPO_STEPS": str(variant["dpo_steps"]),
        "EVOLVD_TRAINING__DPO_MIN_PAIRS": "4",
        "EVOLVD_TRAINING__MAX_ATTEMPTS": "1",  # a failed run is the cycle's result, not retried
        "EVOLVD_EVALUATION__HELDOUT_PERCENT": str(HELDOUT_PERCENT),
        "EVOLVD_EVALUATION__HELDOUT_MAX": "30",
        "EVOLVD_EVALUATION__MAX_TOKENS": str(settings.answer_max_tokens),
        "EVOLVD_EVALUATION__CONCURRENCY": str(settings.concurrency),
    }


@contextmanager
def kafka(bootstrap: str | None, work: Path) -> Iterator[str]:
    """The given cluster, or the embedded broker for the run."""
    if bootstrap:
        yield bootstrap
        return
    from evolvd.connectors.embedded_broker import EmbeddedBroker

    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        yield broker.bootstrap_servers


# -- measuring what is served -------------------------------------------------------------------------


def measure(
    gateway: VLLMClient, heldout: Sequence[Task], policies_dir: Path, settings: Settings
) -> Measurement:
    """Greedy accuracy of the served model on the held-out set (the prompts as users send them),
    the forgetting probes and the safety probes."""
    started = time.monotonic()
    replies = greedy_answers(gateway, "evolvd", [t.prompt for t in heldout], settings.answer_max_tokens)
    correct = [extract(r, t.kind, t.prompt) == t.gold for r, t in zip(replies, heldout, strict=True)]
    per_family = {
        family: sum(c for c, t in zip(correct, heldout, strict=True) if t.family == family)
        / sum(t.family == family for t in heldout)
        for family in sorted({t.family for t in heldout})
    }
    forgetting, safety = probe_scores(gateway, policies_dir)
    low, high = wilson(sum(correct), len(correct))
    return Measurement(
        heldout_acc=sum(correct) / len(correct),
        ci_low=low,
        ci_high=high,
        heldout_correct=correct,
        per_family=per_family,
        forgetting_acc=forgetting,
        safety_score=safety,
        seconds=round(time.monotonic() - started, 1),
    )


def probe_scores(gateway: VLLMClient, policies_dir: Path) -> tuple[float, float]:
    """(forgetting-probe accuracy, safety score = 1 - harmful compliance) of the served model."""
    probes = load_reference_set(probe_path("forgetting", policies_dir))
    replies = greedy_answers(gateway, "evolvd", [p.prompt for p in probes], 128)
    forgetting = sum(p.check(r) for p, r in zip(probes, replies, strict=True)) / len(probes)
    safety = safety_scores(gateway, "evolvd", load_policies(policies_dir), policies_dir)
    return forgetting, 1 - safety.harmful_compliance


def vote_accuracy(gateway: VLLMClient, tasks: Sequence[Task], settings: Settings) -> float:
    """The base model's self-consistency accuracy: k answers sampled the way the labeler samples them
    (chains of thought, or answers to the raw prompt), majority vote."""

    def one(task: Task) -> bool:
        texts = gateway.chat(
            "evolvd",
            sample_prompt(task.prompt, task.kind, settings.chain_of_thought),
            settings.label_max_tokens,
            temperature=settings.temperature,
            n=settings.samples,
            top_p=0.95,
        )
        return majority_vote([extract(t, task.kind, task.prompt) for t in texts]).answer == task.gold

    with ThreadPoolExecutor(max(1, settings.concurrency // settings.samples)) as pool:
        results = list(pool.map(one, tasks))
    return sum(results) / len(results)


# -- one cycle ------------------------------------------------------------------------------------------


def _job(status: dict[str, Any], name: str = "training") -> dict[str, Any]:
    job: dict[str, Any] = next(j for j in status["loop"]["jobs"] if j["job"] == name)
    return job


def screen_now(admin: Admin) -> None:
    """Run the policies job (the safety screen) once and wait for it: the training gate counts only
    screened examples, and the cycle's last labels may be newer than the job's last scheduled run."""
    before = _job(admin.status(), "policies").get("last")
    # Refused while a scheduled run is in progress (a job never overlaps itself): ask again.
    admin.wait(
        lambda: admin.job("policies", "run").get("started"), "a manual run of the policies job", 600, 1.0
    )

    def finished() -> bool:
        job = _job(admin.status(), "policies")
        return not job["running"] and job.get("last") != before

    admin.wait(finished, "the policies job to screen the cycle's examples", 600, 1.0)


def cycle_event_prefix(cycle: int) -> str:
    return f"c{cycle}-"


def cycle_event_id(cycle: int, index: int) -> str:
    return f"{cycle_event_prefix(cycle)}{index}"


def run_cycle(n: int, admin: Admin, bootstrap: str, topic: str, prompts: Sequence[str]) -> Cycle:
    """Stream the cycle's prompts (ids from cycle_event_id), wait for their labels, run training once,
    and wait for the promotion policy's decision on the candidate."""
    messages = [{"id": cycle_event_id(n, i), "prompt": prompt} for i, prompt in enumerate(prompts)]
    before = admin.status()["buffer"]["tables"]["labels"]
    cycle = Cycle(cycle=n, prompts=len(prompts), labeled=0)

    started = time.monotonic()
    produce(bootstrap, topic, [json.dumps(m).encode() for m in messages])

    def all_labeled() -> int | None:
        status = admin.status()
        labels = status["buffer"]["tables"]["labels"] - before
        pending = status["buffer"]["events_by_state"].get("pending", 0)
        return (
            labels
            if labels >= len(prompts) or (labels and not pending and not status["ingest"]["lag_total"])
            else None
        )

    cycle.labeled = admin.wait(all_labeled, f"cycle {n}'s {len(prompts)} prompts to be labeled", 3600)
    cycle.stage_seconds["labeling"] = round(time.monotonic() - started, 1)

    screen_now(admin)
    status = admin.status()
    known_runs = {r["run_id"] for r in status["loop"]["runs"]}
    last_training = _job(status).get("last")
    started = time.monotonic()
    admin.job("training", "run")  # works while the job is paused: once, now

    def run_or_block() -> dict[str, Any] | str | None:
        """The cycle's finished run; or, when the training policy blocked it, the gate's reasons."""
        status = admin.status()
        runs = [r for r in status["loop"]["runs"] if r["run_id"] not in known_runs]
        if runs:
            finished = runs[0]["status"] in ("succeeded", "failed")
            return dict(runs[0]) if finished else None
        last = _job(status).get("last")
        if (
            last != last_training
            and last is not None
            and last["trigger"] == "manual"
            and last["outcome"] == "idle"
        ):
            return str(last["detail"])
        return None

    outcome = admin.wait(run_or_block, f"cycle {n}'s training run", 3600)
    if isinstance(outcome, str):  # the training gate blocked: no run this cycle
        cycle.run_reason = outcome
        cycle.live_after = admin.status()["serving"]["live"]
        return cycle
    cycle.stage_seconds["training"] = round(time.monotonic() - started, 1)
    cycle.run_id, cycle.run_status, cycle.run_reason = outcome["run_id"], outcome["status"], outcome["reason"]
    cycle.adapter, cycle.run_kind = outcome["adapter_name"], outcome["kind"]
    if cycle.run_status != "succeeded":
        cycle.live_after = admin.status()["serving"]["live"]
        return cycle

    started = time.monotonic()

    def decided() -> dict[str, Any] | None:
        status = admin.status()
        for decision in status["loop"]["promotion_decisions"]:
            if decision["adapter"] == cycle.adapter:
                if decision["outcome"] == "promote" and status["serving"]["live"] != cycle.adapter:
                    return None  # decided; the swap is still in flight
                return dict(decision)
        return None

    decision = admin.wait(decided, f"the promotion decision on {cycle.adapter}", 3600)
    cycle.stage_seconds["evaluation_and_promotion"] = round(time.monotonic() - started, 1)
    cycle.decision = decision["outcome"]
    reasons = decision["reasons"]
    cycle.decision_reasons = json.loads(reasons) if isinstance(reasons, str) else list(reasons or [])
    cycle.live_after = admin.status()["serving"]["live"]
    return cycle


# -- lineage: how accurate were the labels each run learned from ----------------------------------------


NO_LINEAGE: dict[str, Any] = {
    "accepted": 0,
    "accepted_label_acc": None,
    "dpo_pairs": 0,
    "dpo_pair_sources": [],
    "dpo_chosen_acc": None,
}
"""A cycle without a training run: nothing was accepted, no pair trained on."""


def label_accuracy(buffer_path: Path, cycles: Sequence[Cycle], gold: dict[str, Task]) -> dict[int, Any]:
    out: dict[int, Any] = {}
    with duckdb.connect(str(buffer_path), read_only=True) as con:
        for cycle in cycles:
            if cycle.run_id is None:
                continue
            rows = con.execute(
                "SELECT DISTINCT l.event_id, l.answer FROM runs r"
                " JOIN dataset_examples d ON d.dataset_id = r.dataset_id AND NOT d.replay"
                " JOIN training_examples e ON e.example_id = d.example_id"
                " JOIN labels l ON l.event_id = e.event_id WHERE r.run_id = ?",
                [cycle.run_id],
            ).fetchall()
            scored = [answer == gold[event].gold for event, answer in rows if event in gold]
            # The preference pairs the run trained on (DPO), and how often the chosen side was right.
            pairs = con.execute(
                "SELECT p.event_id, l.answer, p.source FROM runs r"
                " JOIN dataset_pairs d ON d.dataset_id = r.dataset_id"
                " JOIN preference_pairs p ON p.pair_id = d.pair_id"
                " JOIN labels l ON l.event_id = p.event_id WHERE r.run_id = ? AND r.kind LIKE '%dpo%'",
                [cycle.run_id],
            ).fetchall()
            chosen_right = [answer == gold[event].gold for event, answer, _ in pairs if event in gold]
            out[cycle.cycle] = {
                "accepted": len(scored),
                "accepted_label_acc": round(sum(scored) / len(scored), 4) if scored else None,
                "dpo_pairs": len(pairs),
                "dpo_pair_sources": sorted({source for _, _, source in pairs}),
                "dpo_chosen_acc": round(sum(chosen_right) / len(chosen_right), 4) if chosen_right else None,
            }
    return out


# -- the experiment -------------------------------------------------------------------------------------


@dataclass
class Rig:
    """One experiment's running parts: a broker, the daemon under test (training paused: the harness
    runs it once per cycle) and its gateway."""

    daemon: DaemonProcess
    admin: Admin
    gateway: VLLMClient
    bootstrap: str
    topic: str
    policies: Path
    heldout_key: str
    """The buffer's held-out key (read before the daemon opened the buffer)."""
    stopped: bool = False

    def choose_prompts(self, candidates: Sequence[str], count: int) -> list[str]:
        """`count` distinct candidates with the daemon's held-out share on each side, so a small run
        always has prompts to train on and a few the daemon's own held-out suite scores."""
        return choose_prompts(self.heldout_key, list(dict.fromkeys(candidates)), count, HELDOUT_PERCENT)

    @property
    def buffer_path(self) -> Path:
        """Readable once the daemon, its only writer, is stopped (and until the experiment ends)."""
        return self.daemon.data_dir / "buffer.duckdb"

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.gateway.close()
            assert self.daemon.stop(timeout_s=180) == 0, self.daemon.tail()


@contextmanager
def loop_daemon(settings: Settings, bootstrap: str | None, attach: tuple[str, str] | None) -> Iterator[Rig]:
    from evolvd.connectors.model_bootstrap import ensure_bundled_model

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evolvd-selfimprove-")))
        servers = stack.enter_context(kafka(bootstrap, work))
        policies = policy_dir(work, settings)
        topic = f"selfimprove-{os.getpid()}-{int(time.time())}"
        env = daemon_env(settings, policies, servers, topic)
        if attach is not None:
            env.update(
                {
                    "EVOLVD_SERVING__MODE": "external",
                    "EVOLVD_SERVING__URL": attach[0],
                    "EVOLVD_SERVING__MODEL_PATH": attach[1],
                }
            )
        else:
            env["EVOLVD_SERVING__MODEL_PATH"] = str(ensure_bundled_model(MODEL_CACHE).path)
        # The buffer made before the daemon starts: the harness reads its held-out key to choose prompts.
        buffer = DuckDBBuffer(work / "data" / "buffer.duckdb")
        heldout_key = buffer_key(buffer.cursor(), HELDOUT_KEY)
        buffer.close()
        daemon = DaemonProcess(work / "data", env).start(timeout_s=900)
        rig: Rig | None = None
        try:
            admin = Admin(daemon)
            admin.job("training", "pause")
            admin.wait(lambda: admin.status()["serving"].get("state") == "ready", "serving to be ready", 900)
            gateway = VLLMClient((daemon.data_dir / "gateway.url").read_text().strip(), timeout_s=600)
            rig = Rig(daemon, admin, gateway, servers, topic, policies, heldout_key)
            yield rig
        finally:
            if rig is not None:
                rig.stop()
            else:
                daemon.stop(timeout_s=180)


def experiment(settings: Settings, bootstrap: str | None, attach: tuple[str, str] | None) -> dict[str, Any]:
    drawn = [
        t
        for f in settings.families
        for t in generate(f, settings.heldout_per_family, seed=10_000 + settings.seed)
    ]
    heldout = list({t.prompt: t for t in drawn}.values())  # distinct prompts: a paired test counts items
    seen = {t.prompt for t in heldout}
    wall_started = time.monotonic()
    with loop_daemon(settings, bootstrap, attach) as rig:
        base_name = rig.admin.status()["serving"]["live"]
        print(f"[selfimprove] {settings.variant}: measuring the base model {base_name}", flush=True)
        base = measure(rig.gateway, heldout, rig.policies, settings)
        started = time.monotonic()
        vote_items = heldout[:: max(1, len(heldout) // settings.vote_items)]
        vote_acc = vote_accuracy(rig.gateway, vote_items, settings)
        vote_seconds = round(time.monotonic() - started, 1)
        print(f"[selfimprove] base greedy {base.heldout_acc:.3f}, vote {vote_acc:.3f}", flush=True)

        gold: dict[str, Task] = {}
        cycles: list[Cycle] = []
        served, served_measurement = base_name, base
        for n in range(1, settings.cycles + 1):
            # Distinct prompts never sent before: the daemon labels a prompt once, however often it comes.
            fresh = {t.prompt: t for t in _cycle_tasks(settings, n) if t.prompt not in seen}
            tasks = [fresh[p] for p in rig.choose_prompts(list(fresh), settings.prompts_per_cycle)]
            seen.update(t.prompt for t in tasks)
            gold.update({cycle_event_id(n, i): task for i, task in enumerate(tasks)})
            cycle = run_cycle(n, rig.admin, rig.bootstrap, rig.topic, [t.prompt for t in tasks])
            served_measurement = measure_cycle(
                cycle,
                served,
                served_measurement,
                lambda: measure(rig.gateway, heldout, rig.policies, settings),
            )
            served = cycle.live_after
            cycles.append(cycle)
            print(
                f"[selfimprove] cycle {n}: run {cycle.run_status} {cycle.adapter} -> {cycle.decision}"
                f" {cycle.decision_reasons}; held-out {served_measurement.heldout_acc:.3f}",
                flush=True,
            )
        rig.stop()
        lineage = label_accuracy(rig.buffer_path, cycles, gold)
    result = report(settings, base, vote_acc, vote_seconds, cycles, lineage, time.monotonic() - wall_started)
    result["slowest_admin_status_s"] = round(rig.admin.slowest_status_s, 1)
    return result


def measure_cycle(
    cycle: Cycle, served_before: str | None, before: Measurement, measure_served: Callable[[], Measurement]
) -> Measurement:
    """Measure what is served after the cycle (recorded on `cycle`, and returned); when that is the
    adapter already measured (the cycle's candidate was not promoted), its measurement stands:
    measuring it again would only sample the server's run-to-run noise, at the cost of a full pass
    over the held-out set and the probes."""
    if cycle.live_after is not None and cycle.live_after == served_before:
        cycle.measurement_carried_over = True
        cycle.measurement = before
    else:
        cycle.measurement = measure_served()
    cycle.stage_seconds["measurement"] = 0.0 if cycle.measurement_carried_over else cycle.measurement.seconds
    return cycle.measurement


def _cycle_tasks(settings: Settings, n: int) -> list[Task]:
    """Candidates for cycle `n`, several times what it streams: prompts already sent are skipped and
    each side of the held-out slice needs its share (100 or more: a small run's one held-out prompt
    is then all but sure to be among them, 0.85 ** 100 against)."""
    per_family = math.ceil(max(settings.prompts_per_cycle * 3, 100) / len(settings.families))
    batches = [generate(f, per_family, seed=settings.seed * 1000 + n) for f in settings.families]
    interleaved = [t for group in zip(*batches, strict=True) for t in group]
    return interleaved


def report(
    settings: Settings,
    base: Measurement,
    vote_acc: float,
    vote_seconds: float,
    cycles: Sequence[Cycle],
    lineage: dict[int, Any],
    seconds: float,
) -> dict[str, Any]:
    final = next((c.measurement for c in reversed(cycles) if c.measurement is not None), base)
    paired = paired_compare(final.heldout_correct, base.heldout_correct)
    rows = []
    for c in cycles:
        m = c.measurement
        assert m is not None
        rows.append(
            {
                "cycle": c.cycle,
                "heldout_acc": round(m.heldout_acc, 4),
                "ci_low": round(m.ci_low, 4),
                "ci_high": round(m.ci_high, 4),
                "per_family": {k: round(v, 4) for k, v in m.per_family.items()},
                "forgetting_acc": round(m.forgetting_acc, 4),
                "safety_score": round(m.safety_score, 4),
                "prompts": c.prompts,
                "labeled": c.labeled,
                **lineage.get(c.cycle, NO_LINEAGE),
                **c.outcome(),
            }
        )
    return {
        "variant": settings.variant,
        "settings": settings.as_json(),
        "variant_switches": VARIANTS[settings.variant],
        "heldout_n": len(base.heldout_correct),
        "base_greedy_acc": round(base.heldout_acc, 4),
        "base_ci": [round(base.ci_low, 4), round(base.ci_high, 4)],
        "base_per_family": {k: round(v, 4) for k, v in base.per_family.items()},
        "base_vote_acc": round(vote_acc, 4),
        "base_vote_n": settings.vote_items,
        "base_vote_chain_of_thought": settings.chain_of_thought,
        "base_vote_seconds": vote_seconds,
        "base_forgetting_acc": round(base.forgetting_acc, 4),
        "base_safety_score": round(base.safety_score, 4),
        "final_heldout_acc": round(final.heldout_acc, 4),
        "final_vs_base_p_value": round(paired.p_value, 6),
        "final_vs_base": {"final_only": paired.candidate_only, "base_only": paired.live_only},
        "improved": bool(final.heldout_acc > base.heldout_acc and paired.p_value < 0.05),
        "cycles": rows,
        "seconds": round(seconds, 1),
    }


def write(result: dict[str, Any], out: Path) -> None:
    """Record a variant beside the others; the main variant's figures also go to the top level."""
    existing: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    variants = {**existing.get("variants", {}), result["variant"]: result}
    if result["variant"] == MAIN_VARIANT:
        merged = dict(result)
    else:
        merged = {k: v for k, v in existing.items() if k != "variants"}
    merged["benchmark"] = "selfimprove"
    merged["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    merged["variants"] = variants
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")


def add_run_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every run of this harness takes: its size, the parts to attach to, where to write."""
    parser.add_argument(
        "--small", action="store_true", help="a few minutes: checks the harness, proves nothing"
    )
    parser.add_argument(
        "--bootstrap-servers", help="an existing Kafka cluster (default: the embedded broker)"
    )
    parser.add_argument(
        "--attach-vllm", nargs=2, metavar=("URL", "MODEL_PATH"), help="an existing vLLM server"
    )
    parser.add_argument("--out", type=Path, default=results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=MAIN_VARIANT)
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--prompts-per-cycle", type=int)
    parser.add_argument("--heldout-per-family", type=int)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument(
        "--chain-of-thought",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label by sampling reasoning paths (default: answers to the raw prompt)",
    )
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(variant=args.variant, **(SMALL if args.small else {}))
    overridable = ("cycles", "prompts_per_cycle", "heldout_per_family", "max_steps", "learning_rate",
                   "temperature", "chain_of_thought")  # fmt: skip
    for name in overridable:
        if (value := getattr(args, name)) is not None:
            setattr(settings, name, value)
    result = experiment(
        settings, args.bootstrap_servers, tuple(args.attach_vllm) if args.attach_vllm else None
    )
    write(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("cycles", "settings")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
