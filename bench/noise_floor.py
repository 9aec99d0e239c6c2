"""The evaluation's noise floor: how much the probe scores of ONE model move when only the batch its
requests share changes.

Greedy decoding is meant to be reproducible, but vLLM on a CPU computes in bfloat16 and a batch's
shape changes the order of its floating-point sums: the same prompt can get another greedy answer
when other requests ride along. The daemon's evaluation sends the candidate's and the live model's
probes in whatever batches the moment makes (every suite at once, 8 in flight, other traffic too), so
a probe can flip for the same model. This measures that floor on the shipped probe sets (forgetting,
harmful, benign): the base model answers every probe alone (one request at a time), at the
evaluation's concurrency, and at that concurrency in another order (other batch mates); each
context's scores and per-probe outcomes are compared with every other's. The promotion guards
compare a candidate with the live model on the same probes, so a floor at or above a guard's limit
means that guard can reject (or pass) on noise alone; the run exits 1 then.

    python bench/noise_floor.py                 # the whole probe sets, a few minutes
    python bench/noise_floor.py --small ...     # a few probes: the test suite's harness check

Writes bench/results/noise_floor.json (--small: noise_floor-small.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judgement import served_model

from evolvd.connectors.vllm_client import VLLMClient
from evolvd.evaluation.checkers import load_reference_set
from evolvd.policies.loader import load_policies, probe_path, probe_prompts
from evolvd.policies.probes import refused

RESULTS = Path(__file__).resolve().parent / "results"
EVALUATION_CONCURRENCY = 8  # evolvd.evaluation.evaluator runs its suites on 8 threads


def answers_in_context(
    client: VLLMClient,
    model: str,
    prompts: Sequence[str],
    max_tokens: int,
    concurrency: int,
    seed: int | None,
) -> list[str]:
    """Greedy answers to `prompts` (in their order), asked `concurrency` at a time, in a shuffled order
    when `seed` is given (other batch mates for each prompt)."""
    order = list(range(len(prompts)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    with ThreadPoolExecutor(concurrency) as pool:
        texts = pool.map(lambda i: client.chat(model, prompts[i], max_tokens)[0], order)
        answered = dict(zip(order, texts, strict=True))
    return [answered[i] for i in range(len(prompts))]


def probe_outcomes(
    client: VLLMClient, model: str, limit: int | None, concurrency: int, seed: int | None
) -> dict[str, dict[str, Any]]:
    """Per probe set: each probe's outcome (True: right / complied / refused) and the answers."""
    policies = load_policies(None)
    probes = policies.safety.model_probes
    forgetting = load_reference_set(probe_path("forgetting", None))[:limit]
    harmful = probe_prompts("safety_harmful", None)[:limit]
    benign = probe_prompts("safety_benign", None)[:limit]
    sets: dict[str, tuple[list[str], int, Callable[[int, str], bool]]] = {
        "forgetting": ([i.prompt for i in forgetting], 64, lambda n, a: forgetting[n].check(a)),
        "harmful_compliance": (harmful, probes.max_tokens, lambda n, a: not refused(probes, harmful[n], a)),
        "benign_refusal": (benign, probes.max_tokens, lambda n, a: refused(probes, benign[n], a)),
    }
    out = {}
    for name, (prompts, max_tokens, outcome) in sets.items():
        texts = answers_in_context(client, model, prompts, max_tokens, concurrency, seed)
        out[name] = {"outcomes": [outcome(n, a) for n, a in enumerate(texts)], "answers": texts}
    return out


def compare(contexts: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per probe set, over every pair of contexts: the largest score difference, the probes that
    flipped, and the share of answers whose text changed."""
    report: dict[str, dict[str, Any]] = {}
    for probe_set in next(iter(contexts.values())):
        scores = {
            c: sum(r[probe_set]["outcomes"]) / len(r[probe_set]["outcomes"]) for c, r in contexts.items()
        }
        flipped: set[int] = set()
        changed: list[float] = []
        for a, b in itertools.combinations(contexts, 2):
            left, right = contexts[a][probe_set], contexts[b][probe_set]
            flipped |= {
                n for n, (x, y) in enumerate(zip(left["outcomes"], right["outcomes"], strict=True)) if x != y
            }
            pairs = list(zip(left["answers"], right["answers"], strict=True))
            changed.append(sum(x != y for x, y in pairs) / len(pairs))
        report[probe_set] = {
            "n": len(next(iter(contexts.values()))[probe_set]["outcomes"]),
            "scores": {c: round(s, 4) for c, s in scores.items()},
            "max_score_difference": round(max(scores.values()) - min(scores.values()), 4),
            "probes_that_flipped": sorted(flipped),
            "max_answer_text_changed": round(max(changed), 4),
        }
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--small", action="store_true", help="2 probes per set: a quick check")
    parser.add_argument(
        "--attach-vllm", metavar="URL", help="use this vLLM server (key in $EVOLVD_VLLM_API_KEY)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    limit = 2 if args.small else None
    out = args.out or RESULTS / ("noise_floor-small.json" if args.small else "noise_floor.json")
    started = time.monotonic()
    with served_model(args.attach_vllm) as (client, model):
        contexts = {
            "alone": probe_outcomes(client, model, limit, 1, None),
            "evaluation": probe_outcomes(client, model, limit, EVALUATION_CONCURRENCY, None),
            "evaluation_reordered": probe_outcomes(client, model, limit, EVALUATION_CONCURRENCY, 7),
        }
    report = compare(contexts)
    policies = load_policies(None)
    guards = {
        "forgetting": ("promotion.max_forgetting_drop", policies.promotion.max_forgetting_drop),
        "harmful_compliance": (
            "safety.model_probes.max_harmful_compliance_increase",
            policies.safety.model_probes.max_harmful_compliance_increase,
        ),
    }
    misses = [
        f"{probe_set}: the same model's score moves {report[probe_set]['max_score_difference']:.3f} with the"
        f" batch alone, at or above {guard} ({limit_value})"
        for probe_set, (guard, limit_value) in guards.items()
        if limit_value is not None and report[probe_set]["max_score_difference"] >= max(limit_value, 1e-9)
    ]
    result = {
        "benchmark": "noise_floor",
        "model": model,
        "small": args.small,
        "contexts": {
            "alone": 1,
            "evaluation": EVALUATION_CONCURRENCY,
            "evaluation_reordered": EVALUATION_CONCURRENCY,
        },
        "probe_sets": report,
        "guards": {k: {"guard": g, "limit": v} for k, (g, v) in guards.items()},
        "misses": misses,
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"python": platform.python_version()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "probe_sets"}, indent=2))
    for probe_set, row in report.items():
        print(f"{probe_set}: {row}")
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
