"""What inference-time self-refinement (gateway.self_refine) buys and costs, against plain answers.

On real-fact prompts (bench/facts.py) and the generated small_addition control, the served model's
plain greedy answer (what the gateway returns with the mode off) against what the mode returns: the
judge's critique, the model's refinement, and the refinement only when the judge scores it higher
(evolvd.serving.self_refine, the gateway's own step). Quality: gold accuracy of both on the same
prompts (paired exact test). Cost: seconds per request, plain and refined (ratio), at one request
at a time so latency is not queueing.

    python bench/refine.py [--per-family 40] [--small] [--attach-vllm URL]

Writes bench/results/refine.json (--small: refine-small.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from facts import draw
from judgement import served_model

from evolvd.config import JudgeConfig
from evolvd.evaluation.paired import paired_compare
from evolvd.judge import JudgeSource
from evolvd.labeling.answers import answer_kind, extract
from evolvd.policies.loader import load_policies
from evolvd.serving.self_refine import SelfRefiner

RESULTS = Path(__file__).parent / "results"
FAMILIES = ("capitals", "element_symbols", "small_addition")
ANSWER_TOKENS = 128


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=40)
    parser.add_argument("--small", action="store_true", help="3 prompts per family: a quick check")
    parser.add_argument("--attach-vllm", metavar="URL", help="this vLLM server (key in $EVOLVD_VLLM_API_KEY)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    per_family = 3 if args.small else args.per_family
    out = args.out or RESULTS / ("refine-small.json" if args.small else "refine.json")
    policies = load_policies(None)
    families: dict[str, Any] = {}
    started = time.monotonic()
    with served_model(args.attach_vllm) as (client, model):
        refiner = SelfRefiner(client, JudgeSource(JudgeConfig()), lambda: policies, ANSWER_TOKENS)
        for family in FAMILIES:
            plain_right, refined_right, plain_s, refined_s, replaced = [], [], [], [], 0
            for fact in draw(family, per_family):
                kind = answer_kind(fact.prompt)
                t0 = time.perf_counter()
                answer = client.chat(model, fact.prompt, ANSWER_TOKENS)[0]
                t1 = time.perf_counter()
                refined = refiner.refine(fact.prompt, answer, model)
                t2 = time.perf_counter()
                plain_s.append(t1 - t0)
                refined_s.append(t2 - t0)
                replaced += refined.replaced
                plain_right.append(fact.is_right(extract(answer, kind, fact.prompt)))
                refined_right.append(fact.is_right(extract(refined.text, kind, fact.prompt)))
            paired = paired_compare(refined_right, plain_right)
            families[family] = {
                "n": len(plain_right),
                "plain_acc": round(sum(plain_right) / len(plain_right), 4),
                "refined_acc": round(sum(refined_right) / len(refined_right), 4),
                "refined_only_right": paired.candidate_only,
                "plain_only_right": paired.live_only,
                "p_value_refined_better": round(paired.p_value, 6),
                "replaced_share": round(replaced / len(plain_right), 4),
                "plain_s_median": round(statistics.median(plain_s), 3),
                "refined_s_median": round(statistics.median(refined_s), 3),
                "latency_ratio": round(statistics.median(refined_s) / statistics.median(plain_s), 2),
            }
            print(family, families[family], flush=True)
    result = {
        "benchmark": "refine",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {"per_family": per_family, "model": model, "answer_tokens": ANSWER_TOKENS, "judge": "self"},
        "families": families,
        "seconds": round(time.monotonic() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
