"""Does the daemon's evaluation tell better from worse? Controls decided by the shipped promotion policy.

A real daemon (managed or attached vLLM, the bundled base model) with the shipped promotion, safety and
drift policies; the harness only pauses the daemon's own training job and raises the held-out share and
its item cap (`evaluation.heldout_percent`: 40 and `heldout_max`: 200, so the 324 distinct prompts of the
family give the held-out suite enough items for a significance test). Traffic: every distinct
`small_addition` prompt; the held-out ones go through Kafka to the daemon, which labels them by its own
vote (gold answers never reach it). The rest the harness samples itself with the labeler's own pipeline,
and trains three adapters from the base with the daemon's own training child and shipped
hyperparameters:

- `wrong` (negative control): sampled reasoning paths whose answer is wrong, and wrong direct answers
  (the gold answer + 1 where no path was wrong);
- `self`: what the daemon's loop trains on, the confident vote's winning paths and direct answers;
- `gold` (positive control): sampled paths whose answer is right, and the right direct answers.

Every candidate also gets the same general replay rows (REPLAY_SHARE of its set, from the
Self-Instruct seed tasks), as the daemon mixes earlier data into each run (`--no-replay`: none), and
the safety anchor rows the daemon's snapshot adds (`training.safety_anchor_share` of the shipped policy).
Each is registered (`POST /adapters`), evaluated by the daemon against the live model, and decided by
the shipped promotion policy. Reported: each decision with its reasons, `negative_control_rejected`,
`positive_control_promoted` (promote, or the shipped policy's canary), and `heldout_sign_agreement`:
over the evaluations, the share whose held-out delta (candidate - live, the daemon's own scoring
against its vote labels) has the sign of the gold-accuracy delta on the same items and answers.

    python bench/controls.py [--small] [--attach-vllm URL MODEL_PATH] [--bootstrap-servers HOST:PORT]
                             [--heldout-min-confidence BAR]

Writes bench/results/controls.json (--small: controls-small.json). Exits 1 when a control fails or
the sign agreement is under 0.8 (full run only: a small run checks the harness, not the verdicts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_process import DaemonProcess
from facts import Fact, draw
from helpers import produce
from selfimprove import MODEL_CACHE, Admin, kafka

from evolvd.admin_client import admin_call
from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.heldout import heldout_sides
from evolvd.buffer.keys import HELDOUT_KEY, buffer_key
from evolvd.config import JudgeConfig, TrainingConfig
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.embeddings import embed
from evolvd.judge import JudgeSource
from evolvd.labeling.answers import extract
from evolvd.labeling.pipeline import LabelResult, label_prompt
from evolvd.labeling.prompts import direct_completion
from evolvd.policies.loader import load_candidate, safety_anchor_examples
from evolvd.training.snapshot import anchor_rows, rows_for_share
from evolvd.training.spec import TrainSpec, hyperparameters_for

RESULTS = Path(__file__).parent / "results"
HELDOUT_PERCENT = 40
HELDOUT_MAX = 200
FAMILY = "small_addition"
# Only the labeling policy is the harness's: critique off (the vote is what labels the held-out suite).
LABELING = "critique: false\nrefine: false\n"
SIGN_AGREEMENT_TARGET = 0.8


@dataclass(frozen=True)
class Candidate:
    name: str
    examples: list[tuple[str, str]]
    """(prompt, completion) pairs it is trained on."""


def training_sets(labeled: Sequence[tuple[Fact, LabelResult]], min_confidence: float) -> list[Candidate]:
    wrong: list[tuple[str, str]] = []
    gold: list[tuple[str, str]] = []
    own: list[tuple[str, str]] = []
    for fact, result in labeled:
        right = [s.text for s in result.samples if fact.is_right(s.answer)]
        bad = [s.text for s in result.samples if s.answer is not None and not fact.is_right(s.answer)]
        gold += [(fact.prompt, t) for t in right[:2]] + [(fact.prompt, direct_completion(fact.gold[0]))]
        wrong_answer = next((s.answer for s in result.samples if s.text in bad), str(int(fact.gold[0]) + 1))
        wrong += [(fact.prompt, t) for t in bad[:2]] + [(fact.prompt, direct_completion(str(wrong_answer)))]
        if result.vote.answer is not None and result.vote.confidence >= min_confidence:
            own += [(fact.prompt, completion) for _, completion in result.examples]
    return [Candidate("wrong", wrong), Candidate("self", own), Candidate("gold", gold)]


SEED_TASKS = Path(__file__).parent / "data" / "seed_tasks.jsonl"
REPLAY_SHARE = 0.2
"""Share of every candidate's training set drawn from general human-written instructions (the
Self-Instruct seed tasks), as the daemon mixes `training.replay_share` of earlier data into a run:
one narrow family alone makes any adapter forget, whatever its labels."""


def with_replay(candidates: Sequence[Candidate], seed: int = 0) -> list[Candidate]:
    """Each candidate with the same replay rows added (REPLAY_SHARE of the result), so the controls
    still differ only in their family labels."""
    tasks = [json.loads(line) for line in SEED_TASKS.read_text().splitlines() if line.strip()]
    general = [
        (t["instruction"] + (f"\n\n{i['input']}" if i["input"] else ""), i["output"])
        for t in tasks
        for i in t["instances"][:1]
    ]
    random.Random(seed).shuffle(general)
    out = []
    for candidate in candidates:
        wanted = round(len(candidate.examples) * REPLAY_SHARE / (1 - REPLAY_SHARE))
        out.append(Candidate(candidate.name, [*candidate.examples, *general[:wanted]]))
    return out


def with_safety_anchor(candidates: Sequence[Candidate], share: float) -> list[Candidate]:
    """Each candidate with the safety anchor rows the daemon's snapshot would add at `share`
    (training.safety_anchor_share of the shipped policy), picked by the snapshot's own functions."""
    anchors = safety_anchor_examples(None)
    return [
        Candidate(
            c.name, [*c.examples, *anchor_rows(anchors, rows_for_share(len(c.examples), share), "controls")]
        )
        for c in candidates
    ]


def train(candidate: Candidate, base_model: Path, out: Path, work: Path, config: TrainingConfig) -> float:
    """The daemon's training child on `candidate`'s examples, with the shipped hyperparameters."""
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / f"{candidate.name}.parquet"
    rows = list(candidate.examples)
    random.Random(0).shuffle(rows)
    pq.write_table(pa.table({"prompt": [p for p, _ in rows], "completion": [c for _, c in rows]}), dataset)
    hp = replace(hyperparameters_for(config, len(rows)), dpo_steps=0)  # no preference pairs: SFT alone
    spec = TrainSpec(candidate.name, str(base_model), str(dataset), str(out), str(work / candidate.name),
                     hyperparameters=hp)  # fmt: skip
    spec_path = work / f"{candidate.name}.spec.json"
    spec.write(spec_path)
    done = subprocess.run(
        [sys.executable, "-m", "evolvd.training.child", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"training {candidate.name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return round(time.monotonic() - started, 1)


def decision_for(admin: Admin, name: str) -> dict[str, Any]:
    def decided() -> dict[str, Any] | None:
        for decision in admin.status()["loop"]["promotion_decisions"]:
            if decision["adapter"] == name:
                return dict(decision)
        return None

    found: dict[str, Any] = admin.wait(decided, f"the promotion decision on {name}", 3600)
    return found


def gold_delta(evaluation: dict[str, Any], gold: dict[str, Fact]) -> tuple[float, float, int]:
    """(daemon's held-out delta, gold-accuracy delta, items) of one held-out evaluation, on the same items
    and the same answers."""
    details = evaluation["details"]
    details = json.loads(details) if isinstance(details, str) else details
    items = [i for i in details["items"] if i["event_id"] in gold]
    n = len(items)
    if not n:
        return 0.0, 0.0, 0
    daemon = sum(i["candidate"] for i in items) / n - sum(i["live"] for i in items) / n

    def right(item: dict[str, Any], side: str) -> bool:
        fact = gold[item["event_id"]]
        return fact.is_right(extract(item[f"{side}_answer"], "number", fact.prompt))

    truth = sum(right(i, "candidate") for i in items) / n - sum(right(i, "live") for i in items) / n
    return daemon, truth, n


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


def daemon_env(servers: str, topic: str, policies: Path, concurrency: int) -> dict[str, str]:
    return {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": servers,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": f"bench-{topic}",
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_GATEWAY__PORT": "0",
        "EVOLVD_POLICIES__DIR": str(policies),
        "EVOLVD_LABELING__CONCURRENCY": str(concurrency),
        "EVOLVD_LABELING__REQUEST_TIMEOUT_S": "1800",
        "EVOLVD_LABELING__YIELD_TO_LOOP": "false",
        "EVOLVD_SCHEDULER__LABELING__INTERVAL_S": "1",
        "EVOLVD_SCHEDULER__EVALUATION__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__PROMOTION__INTERVAL_S": "1",
        "EVOLVD_EVALUATION__HELDOUT_PERCENT": str(HELDOUT_PERCENT),
        "EVOLVD_EVALUATION__HELDOUT_MAX": str(HELDOUT_MAX),
        "EVOLVD_EVALUATION__CONCURRENCY": str(concurrency),
    }


def judged(
    admin: Admin, daemon: DaemonProcess, candidate: Candidate, folder: Path, gold: dict[str, Fact]
) -> dict[str, Any]:
    """Register a trained candidate, wait for the shipped policy's decision, and score it."""
    body = {"path": str(folder), "evaluate": True}  # through the loop's evaluation and promotion policy
    response = admin_call(daemon.url, "POST", "/adapters", token=daemon.token, body=body, timeout_s=600)
    response.raise_for_status()
    name = response.json()["name"]
    decision = decision_for(admin, name)
    lineage = admin_call(daemon.url, "GET", f"/adapters/{name}", token=daemon.token, timeout_s=120).json()
    heldout_eval = next(e for e in lineage["adapter"]["evaluations"] if e["suite"] == "heldout")
    daemon_delta, truth_delta, n = gold_delta(heldout_eval, gold)
    reasons = decision["reasons"]
    return {
        "candidate": candidate.name,
        "adapter": name,
        "examples": len(candidate.examples),
        "decision": decision["outcome"],
        "reasons": json.loads(reasons) if isinstance(reasons, str) else list(reasons or []),
        "heldout_score": heldout_eval["score"],
        "live_heldout_score": heldout_eval["baseline_score"],
        "p_value": heldout_eval["p_value"],
        "heldout_n": n,
        "daemon_delta": round(daemon_delta, 4),
        "gold_delta": round(truth_delta, 4),
        "signs_agree": sign(daemon_delta) == sign(truth_delta),
    }


def held_out_split(key: str, facts: Sequence[Fact]) -> tuple[list[Fact], list[Fact]]:
    """The daemon's own held-out rule (a keyed hash of the prompt) applied to the facts."""
    hashes = [hashlib.sha256(f.prompt.encode()).hexdigest() for f in facts]
    sides = heldout_sides(key, hashes, HELDOUT_PERCENT)
    return [f for f, s in zip(facts, sides, strict=True) if s], [
        f for f, s in zip(facts, sides, strict=True) if not s
    ]


def write_policies(folder: Path, heldout_min_confidence: float | None) -> None:
    """The daemon's policy directory: the harness's labeling policy, and (an experiment beside the
    shipped policy) a held-out label bar of its own."""
    folder.mkdir()
    (folder / "labeling.yaml").write_text(LABELING)
    if heldout_min_confidence is not None:
        (folder / "promotion.yaml").write_text(f"heldout_min_confidence: {heldout_min_confidence}\n")


def experiment(args: argparse.Namespace, training: TrainingConfig) -> dict[str, Any]:
    policies = load_candidate(None, {"labeling.yaml": LABELING}, False, "bench")
    facts = draw(FAMILY, 12 if args.small else 10_000)
    started = time.monotonic()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evolvd-controls-")))
        servers = stack.enter_context(kafka(args.bootstrap_servers, work))
        buffer = DuckDBBuffer(work / "data" / "buffer.duckdb")
        heldout, trainable = held_out_split(buffer_key(buffer.cursor(), HELDOUT_KEY), facts)
        buffer.close()
        write_policies(work / "policies", args.heldout_min_confidence)
        topic = f"controls-{os.getpid()}"
        env = daemon_env(servers, topic, work / "policies", args.concurrency)
        if args.attach_vllm:
            url, model_path = args.attach_vllm
            env |= {"EVOLVD_SERVING__MODE": "external", "EVOLVD_SERVING__URL": url,
                    "EVOLVD_SERVING__MODEL_PATH": model_path}  # fmt: skip
            base_model = Path(model_path)
        else:
            from evolvd.connectors.model_bootstrap import ensure_bundled_model

            base_model = ensure_bundled_model(MODEL_CACHE).path
            env["EVOLVD_SERVING__MODEL_PATH"] = str(base_model)
        daemon = DaemonProcess(work / "data", env).start(timeout_s=900)
        stack.callback(daemon.stop, 180)
        admin = Admin(daemon)
        admin.job("training", "pause")  # the candidates are the harness's
        admin.wait(lambda: admin.status()["serving"].get("state") == "ready", "serving to be ready", 900)
        serving = admin.status()["serving"]
        client = VLLMClient(serving["url"], timeout_s=1800, api_key=daemon.vllm_key)
        stack.callback(client.close)
        live = serving["live"]

        gold = {f"held-{i}": fact for i, fact in enumerate(heldout)}
        produce(servers, topic, [json.dumps({"id": k, "prompt": f.prompt}).encode() for k, f in gold.items()])
        print(
            f"[controls] {len(heldout)} held-out prompts to the daemon, {len(trainable)} to train on",
            flush=True,
        )
        judge = JudgeSource(JudgeConfig())(client, live)

        def label(fact: Fact) -> tuple[Fact, LabelResult]:
            return fact, label_prompt(client, live, fact.prompt, fact.prompt, policies.labeling,
                                      policies.safety.principles, embed, judge)  # fmt: skip

        with ThreadPoolExecutor(args.concurrency) as pool:
            labeled = list(pool.map(label, trainable))
        sampling_s = round(time.monotonic() - started, 1)
        admin.wait(lambda: admin.status()["buffer"]["tables"]["labels"] >= len(heldout),
                   "the held-out prompts to be labeled", 3600)  # fmt: skip
        outcomes: list[dict[str, Any]] = []
        candidates = training_sets(labeled, policies.training.min_confidence)
        anchor_share = policies.training.safety_anchor_share
        mixed = with_safety_anchor(with_replay(candidates) if args.replay else candidates, anchor_share)
        for candidate in mixed:
            folder = daemon.data_dir / "import" / f"control-{candidate.name}"
            seconds = train(candidate, base_model, folder, work / "train", training)
            outcomes.append(judged(admin, daemon, candidate, folder, gold) | {"training_seconds": seconds})
            print(f"[controls] {candidate.name}: {outcomes[-1]}", flush=True)
            if admin.status()["serving"]["live"] != live:  # promoted: the next one is compared with the base
                admin_call(
                    daemon.url, "POST", "/rollback", token=daemon.token, timeout_s=600
                ).raise_for_status()
    by_name = {o["candidate"]: o for o in outcomes}
    return {
        "benchmark": "controls",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "family": FAMILY,
            "distinct_prompts": len(facts),
            "heldout_prompts": len(heldout),
            "training_prompts": len(trainable),
            "heldout_percent": HELDOUT_PERCENT,
            "heldout_max": HELDOUT_MAX,
            "promotion_policy": "shipped"
            if args.heldout_min_confidence is None
            else f"shipped, heldout_min_confidence {args.heldout_min_confidence}",
            "small": args.small,
            "max_steps": training.max_steps,
            "replay_share": REPLAY_SHARE if args.replay else 0.0,
            "safety_anchor_share": policies.training.safety_anchor_share,
        },
        "candidates": outcomes,
        "negative_control_rejected": by_name["wrong"]["decision"] == "reject",
        "positive_control_promoted": by_name["gold"]["decision"] in ("promote", "canary"),
        "heldout_sign_agreement": round(sum(o["signs_agree"] for o in outcomes) / len(outcomes), 4),
        "sampling_seconds": sampling_s,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a few prompts and steps: checks the harness")
    parser.add_argument("--attach-vllm", nargs=2, metavar=("URL", "MODEL_PATH"))
    parser.add_argument("--bootstrap-servers")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--no-replay", dest="replay", action="store_false", help="train on the family's examples alone"
    )
    parser.add_argument(
        "--heldout-min-confidence",
        type=float,
        help="an experiment beside the shipped policy: the held-out suite's own label bar",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out or RESULTS / ("controls-small.json" if args.small else "controls.json")
    result = experiment(args, TrainingConfig(**({"max_steps": 2} if args.small else {})))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = {
        k: result[k]
        for k in ("negative_control_rejected", "positive_control_promoted", "heldout_sign_agreement")
    }
    print(json.dumps(verdict), flush=True)
    if args.small:
        return 0  # a small run checks the harness; its verdicts rest on a handful of items
    passed = verdict["negative_control_rejected"] and verdict["positive_control_promoted"]
    return 0 if passed and result["heldout_sign_agreement"] >= SIGN_AGREEMENT_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
