"""How well the meaning vote tells paraphrases from contradictions, and where its threshold sits.

bench/data/meaning_pairs.jsonl holds labelled pairs of long answers written for this purpose: each
question has one paraphrase pair (same meaning, different words) and one contradiction pair (the
same frame, a different assertion: another name, number or claim). Two answers are "one meaning"
for the vote when their MiniLM cosine distance is under the threshold, with or without the
contradiction rule (evolvd.labeling.answers.contradicts: different names or numbers keep them
apart). For every threshold of the sweep: precision and recall of "one meaning" against the labels,
and F0.5 (precision weighs more: merging a contradiction inflates a label's confidence, splitting a
paraphrase only lowers it). The daemon's MEANING_THRESHOLD should be the best F0.5 with the rule.

    python bench/meaning.py

Writes bench/results/meaning.json; exits 1 when the shipped threshold is not the sweep's best F0.5.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from evolvd.embeddings import embed
from evolvd.labeling.answers import MEANING_THRESHOLD, contradicts

PAIRS = Path(__file__).parent / "data" / "meaning_pairs.jsonl"
RESULTS = Path(__file__).parent / "results" / "meaning.json"
SWEEP = [round(0.05 + 0.025 * i, 3) for i in range(15)]  # 0.05 .. 0.40


def scores(predicted: list[bool], truth: list[bool]) -> dict[str, float]:
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    beta2 = 0.25
    f05 = (1 + beta2) * precision * recall / (beta2 * precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f05": round(f05, 4)}


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    a, b = embed([r["a"] for r in rows]), embed([r["b"] for r in rows])
    distance = 1.0 - np.sum(a * b, axis=1)
    truth = [bool(r["same"]) for r in rows]
    conflict = [contradicts(r["a"], r["b"], r["question"]) for r in rows]
    sweep: list[dict[str, Any]] = []
    for threshold in SWEEP:
        close = [float(d) < threshold for d in distance]
        sweep.append(
            {
                "threshold": threshold,
                "embedding_only": scores(close, truth),
                "with_contradiction_rule": scores(
                    [c and not x for c, x in zip(close, conflict, strict=True)], truth
                ),
            }
        )
    best = max(sweep, key=lambda s: (s["with_contradiction_rule"]["f05"], -s["threshold"]))
    shipped = next(s for s in sweep if s["threshold"] == MEANING_THRESHOLD)
    result = {
        "benchmark": "meaning",
        "pairs": len(rows),
        "paraphrases": sum(truth),
        "contradictions": len(truth) - sum(truth),
        "distances": {
            "paraphrase_median": round(float(np.median(distance[np.array(truth)])), 4),
            "contradiction_median": round(float(np.median(distance[~np.array(truth)])), 4),
        },
        "contradiction_rule_catches": sum(c for c, t in zip(conflict, truth, strict=True) if not t),
        "contradiction_rule_false_alarms": sum(c for c, t in zip(conflict, truth, strict=True) if t),
        "sweep": sweep,
        "best_threshold": best["threshold"],
        "shipped_threshold": MEANING_THRESHOLD,
        "shipped": shipped,
        "nli": "no NLI or cross-encoder model ships in a PyPI package that could be found (bidirectional"
        " entailment would need one downloaded from a hub, which evolvd never does at run time)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for s in sweep:
        e, r = s["embedding_only"], s["with_contradiction_rule"]
        embedding = f"P={e['precision']:.2f} R={e['recall']:.2f} F0.5={e['f05']:.2f}"
        print(
            f"t={s['threshold']:.3f} embedding {embedding} | +rule P={r['precision']:.2f} R={r['recall']:.2f}"
        )
    print(f"best {best['threshold']} shipped {MEANING_THRESHOLD}")
    return 0 if best["threshold"] == MEANING_THRESHOLD else 1


if __name__ == "__main__":
    sys.exit(main())
