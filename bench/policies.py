"""Policy quality: drift-test power and false-alarm rate, PII precision and recall, each beside a
plain baseline measured in the same run.

Drift. Windows of prompts drawn from real human-written instructions (bench/data/seed_tasks.jsonl)
and from the task families evolvd generates. A "shift" scenario compares a reference window with a
window from another distribution; a "same" scenario compares two disjoint windows of one
distribution. Power = share of shift draws the embedding MMD test flags at the configured
trigger_p_value; false-alarm rate = share of same-distribution draws it flags. Baseline: the plain
two-sample KS test on prompt length, at the same significance level.

PII. A labelled set generated here: realistic sentences with one PII value of each kind inserted
(valid by construction: Luhn-valid cards, well-formed SSNs and DNIs, real area codes), and
look-alike sentences with none (non-Luhn card-length numbers, versions, dates, order numbers,
invalid addresses). A number written in SSN format (NNN-NN-NNNN) counts as an SSN by design, so
look-alikes avoid that shape. Span-level precision/recall of evolvd's detector vs a plain regex baseline.

    python bench/policies.py [--draws 20] [--seed-data bench/data/seed_tasks.jsonl]

Exits 1 when a target is missed: drift power >= 0.9, false alarms <= 0.05, PII precision >= 0.95,
PII recall >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from stdnum import luhn
from stdnum.es import dni

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evolvd.embeddings import embed
from evolvd.policies.drift import mmd_permutation_test
from evolvd.policies.loader import load_policies
from evolvd.policies.pii import PiiDetector
from evolvd.workload import generate

RESULTS = Path(__file__).parent / "results" / "policies.json"
SEED_DATA = Path(__file__).resolve().parent / "data" / "seed_tasks.jsonl"
TARGETS = {"drift_power": 0.9, "drift_false_alarm_rate": 0.05, "pii_precision": 0.95, "pii_recall": 0.9}

Corpus = tuple[list[str], np.ndarray]


# --- drift -------------------------------------------------------------------------------------


def seed_prompts(path: Path) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        r["instruction"] + (f"\n{r['instances'][0]['input']}" if r["instances"][0]["input"] else "")
        for r in rows
    ]


def draw(
    corpus: Corpus, n: int, rng: np.random.Generator, exclude: set[int] | None = None
) -> tuple[Corpus, set[int]]:
    pool = [i for i in range(len(corpus[0])) if not exclude or i not in exclude]
    idx = rng.choice(pool, size=n, replace=False)
    return ([corpus[0][i] for i in idx], corpus[1][idx]), set(int(i) for i in idx)


def mix(a: Corpus, b: Corpus, share_b: float, n: int, rng: np.random.Generator) -> Corpus:
    n_b = round(n * share_b)
    part_a, _ = draw(a, n - n_b, rng)
    part_b, _ = draw(b, n_b, rng)
    return [*part_a[0], *part_b[0]], np.vstack([part_a[1], part_b[1]])


def run_drift(
    corpora: dict[str, Corpus], draws: int, window: int, permutations: int, alpha: float
) -> dict[str, object]:
    scenarios: dict[str, tuple[str, Callable[[np.random.Generator], tuple[Corpus, Corpus]]]] = {
        "seed_to_arithmetic": (
            "shift",
            lambda r: (draw(corpora["seed"], 80, r)[0], draw(corpora["arithmetic"], 80, r)[0]),
        ),
        "arithmetic_to_unit_conversion": (
            "shift",
            lambda r: (
                draw(corpora["arithmetic"], window, r)[0],
                draw(corpora["unit_conversion"], window, r)[0],
            ),
        ),
        "comparison_to_parity": (
            "shift",
            lambda r: (draw(corpora["comparison"], window, r)[0], draw(corpora["parity"], window, r)[0]),
        ),
        # Same lengths, new topic: the plain length test cannot see this one; the embeddings can.
        "short_seed_to_generated_length_matched": (
            "shift",
            lambda r: length_matched(corpora["seed_short"], corpora["mixed"], 30, r),
        ),
        "arithmetic_to_25pct_unit_conversion": (
            "partial",
            lambda r: (
                draw(corpora["arithmetic"], window, r)[0],
                mix(corpora["arithmetic"], corpora["unit_conversion"], 0.25, window, r),
            ),
        ),
        "seed_vs_seed": ("same", lambda r: _disjoint(corpora["seed"], 80, r)),
        "arithmetic_vs_arithmetic": ("same", lambda r: _disjoint(corpora["arithmetic"], window, r)),
        "mixed_families_vs_mixed_families": ("same", lambda r: _disjoint(corpora["mixed"], window, r)),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (kind, make) in scenarios.items():
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        mmd_flags, length_flags, seconds = 0, 0, 0.0
        for d in range(draws):
            ref, rec = make(rng)
            started = time.perf_counter()
            result = mmd_permutation_test(ref[1], rec[1], permutations, seed=d)
            seconds += time.perf_counter() - started
            mmd_flags += result.p_value < alpha
            length_flags += stats.ks_2samp([len(t) for t in ref[0]], [len(t) for t in rec[0]]).pvalue < alpha
        out[name] = {
            "kind": kind,
            "window": len(ref[0]),
            "draws": draws,
            "mmd_flag_rate": mmd_flags / draws,
            "length_ks_flag_rate": length_flags / draws,
            "mmd_seconds_per_test": round(seconds / draws, 3),
        }
        print(
            f"drift {name:40s} {kind:8s} mmd {mmd_flags / draws:.2f}  length-KS {length_flags / draws:.2f}",
            flush=True,
        )
    shifts = [v for v in out.values() if v["kind"] == "shift"]
    same = [v for v in out.values() if v["kind"] == "same"]
    return {
        "scenarios": out,
        "drift_power": min(float(v["mmd_flag_rate"]) for v in shifts),
        "drift_partial_shift_power": out["arithmetic_to_25pct_unit_conversion"]["mmd_flag_rate"],
        "drift_false_alarm_rate": sum(float(v["mmd_flag_rate"]) for v in same) / len(same),
        "baseline_length_ks_power": min(float(v["length_ks_flag_rate"]) for v in shifts),
        "baseline_length_ks_false_alarm_rate": sum(float(v["length_ks_flag_rate"]) for v in same) / len(same),
    }


def length_matched(a: Corpus, b: Corpus, n: int, rng: np.random.Generator) -> tuple[Corpus, Corpus]:
    """A window from `a`, and for each of its prompts the unused prompt of `b` nearest in length."""
    ref, _ = draw(a, n, rng)
    lengths_b = np.array([len(t) for t in b[0]], dtype=float)
    used: set[int] = set()
    picked = []
    for text in ref[0]:
        order = np.argsort(np.abs(lengths_b - len(text)) + rng.random(len(lengths_b)) * 0.5)
        choice = next(int(k) for k in order if int(k) not in used)
        used.add(choice)
        picked.append(choice)
    return ref, ([b[0][j] for j in picked], b[1][picked])


def _disjoint(corpus: Corpus, n: int, rng: np.random.Generator) -> tuple[Corpus, Corpus]:
    first, used = draw(corpus, n, rng)
    second, _ = draw(corpus, n, rng, exclude=used)
    return first, second


# --- PII ---------------------------------------------------------------------------------------

FIRST = ["Maria", "John", "Aisha", "Wei", "Olga", "Carlos", "Priya", "Tom"]
DOMAINS = ["example.com", "mail.acme.io", "uni-heidelberg.de", "corp.example.co.uk", "gmail.com"]
US_AREAS = ["212", "415", "312", "617", "206", "303", "512", "702"]


def _card(rng: random.Random) -> str:
    prefix = rng.choice(["4", "51", "52", "37", "6011"])
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    separator = rng.choice(["", " ", "-"])
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _phone(rng: random.Random) -> str:
    area, exchange, line = rng.choice(US_AREAS), rng.randint(200, 999), rng.randint(1000, 9999)
    return rng.choice(
        [
            f"+1 {area}-{exchange}-{line}",
            f"({area}) {exchange}-{line}",
            f"{area}.{exchange}.{line}",
            f"020 7946 0{rng.randint(100, 999)}",
            f"+44 20 7946 0{rng.randint(100, 999)}",
            f"+33 1 42 68 {rng.randint(10, 99)} {rng.randint(10, 99)}",
        ]
    )


def _email(rng: random.Random) -> str:
    separator = rng.choice([".", "_", "+news", ""])
    return f"{rng.choice(FIRST).lower()}{separator}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"


def _national_id(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return _ssn(rng)
    digits = f"{rng.randint(0, 99999999):08d}"
    return digits + str(dni.calc_check_digit(digits))


def _secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(3)
    if kind == 0:
        return "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    if kind == 1:
        return "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    return "sk_live_" + "".join(rng.choice(alnum) for _ in range(24))


GENERATORS: dict[str, tuple[Callable[[random.Random], str], list[str]]] = {
    "email": (
        _email,
        [
            "Please forward the report to {v} by Monday.",
            "My address is {v}, write any time.",
            "cc {v} on the thread",
        ],
    ),
    "phone": (
        _phone,
        ["You can call me on {v} after five.", "Support line: {v}.", "ring {v} if the server goes down"],
    ),
    "card": (
        _card,
        ["Charge my card {v} for the order.", "The card number {v} was declined.", "use {v} exp 09/28"],
    ),
    "ip": (
        lambda r: (
            f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
            if r.random() < 0.7
            else f"2001:db8:{r.randint(0, 0xFFFF):x}::{r.randint(1, 0xFFFF):x}"
        ),
        ["The host at {v} keeps timing out.", "Whitelist {v} in the firewall.", "ssh admin@ {v} fails"],
    ),
    "national_id": (
        _national_id,
        [
            "My SSN is {v}, do I need it for the form?",
            "National ID: {v}",
            "Fill in the id number {v} on page 2.",
        ],
    ),
    "secret": (_secret, ["Set the key {v} in the env file.", "token={v}", "Our deploy uses {v} right now."]),
}

LOOK_ALIKES: list[Callable[[random.Random], str]] = [
    lambda r: f"Order {''.join(r.choice(string.digits) for _ in range(16))} has shipped.",  # mostly non-Luhn
    lambda r: f"Upgrade to version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 30)} first.",
    lambda r: f"The meeting is at {r.randint(1, 12)}:{r.randint(10, 59)} in room {r.randint(1, 40)}.",
    lambda r: f"What is {r.randint(10**6, 10**7)} times {r.randint(10**6, 10**7)}?",
    lambda r: f"Batch {r.randint(10**8, 10**9 - 1)} failed quality control.",
    lambda r: (
        f"Use {r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 99)}.{r.randint(0, 9)} as an example."
    ),
    lambda r: (
        f"The date {r.randint(1990, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} is a deadline."
    ),
    lambda r: f"It costs {r.randint(100, 99999)}.{r.randint(10, 99)} dollars in total.",
    lambda r: "How do I reset my password on the website?",
    lambda r: f"Population grew by {r.randint(1000, 999999):,} people last year.",
    lambda r: "Send a message to the team at the usual address.",
    lambda r: f"Part no. {r.randint(100, 999)}-{r.randint(1000, 9999)}-{r.randint(10, 99)} is back in stock.",
]


def pii_dataset(
    n_per_kind: int, n_negative: int, seed: int = 0
) -> list[tuple[str, list[tuple[str, int, int]]]]:
    rng = random.Random(seed)
    rows: list[tuple[str, list[tuple[str, int, int]]]] = []
    for kind, (make, templates) in GENERATORS.items():
        for _ in range(n_per_kind):
            value = make(rng)
            template = rng.choice(templates)
            start = template.index("{v}")
            rows.append((template.replace("{v}", value), [(kind, start, start + len(value))]))
    for i in range(n_negative):
        text = LOOK_ALIKES[i % len(LOOK_ALIKES)](rng)
        digits = re.sub(r"\D", "", text)
        if text.startswith("Order") and luhn.is_valid(digits):
            continue  # a random 16-digit order number that happens to pass Luhn IS card-shaped PII
        rows.append((text, []))
    return rows


BASELINE_PATTERNS = {
    "email": re.compile(r"\S+@\S+\.\w+"),
    "phone": re.compile(r"\+?\d[\d -]{7,}\d"),
    "card": re.compile(r"\b(?:\d[ -]?){13,16}\b"),
    "ip": re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"),
    "national_id": re.compile(r"\b\d{3}-\d{2}-\d{4}\b|\b\d{8}[A-Z]\b"),
    "secret": re.compile(r"\b[A-Za-z0-9_]{20,}\b"),
}


def baseline_find(text: str) -> list[tuple[str, int, int]]:
    return [(kind, m.start(), m.end()) for kind, p in BASELINE_PATTERNS.items() for m in p.finditer(text)]


def score(
    rows: list[tuple[str, list[tuple[str, int, int]]]], find: Callable[[str], list[tuple[str, int, int]]]
) -> dict[str, float]:
    tp = fp = fn = 0
    for text, gold in rows:
        found = find(text)
        matched: set[int] = set()
        for kind, start, end in found:
            hit = next(
                (
                    i
                    for i, g in enumerate(gold)
                    if g[0] == kind and start < g[2] and end > g[1] and i not in matched
                ),
                None,
            )
            if hit is None:
                fp += 1
            else:
                tp += 1
                matched.add(hit)
        fn += len(gold) - len(matched)
    return {
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _only(detector: PiiDetector, kind: str) -> Callable[[str], list[tuple[str, int, int]]]:
    return lambda text: [(f.kind, f.start, f.end) for f in detector.find(text) if f.kind == kind]


def run_pii(n_per_kind: int, n_negative: int) -> dict[str, object]:
    rows = pii_dataset(n_per_kind, n_negative)
    detector = PiiDetector(load_policies(None).safety.pii)
    started = time.perf_counter()
    ours = score(rows, lambda t: [(f.kind, f.start, f.end) for f in detector.find(t)])
    seconds = time.perf_counter() - started
    per_kind = {}
    for kind in GENERATORS:
        subset = [r for r in rows if not r[1] or r[1][0][0] == kind]
        per_kind[kind] = score(subset, _only(detector, kind))
    base = score(rows, baseline_find)
    print(f"pii evolvd   precision {ours['precision']:.3f} recall {ours['recall']:.3f}", flush=True)
    print(f"pii baseline precision {base['precision']:.3f} recall {base['recall']:.3f}", flush=True)
    return {
        "n_texts": len(rows),
        "n_with_pii": sum(bool(g) for _, g in rows),
        "pii_precision": ours["precision"],
        "pii_recall": ours["recall"],
        "evolvd": ours,
        "per_kind": per_kind,
        "baseline_regex": base,
        "precision_vs_baseline_ratio": ours["precision"] / base["precision"] if base["precision"] else None,
        "caveat": "the set is generated from templates written alongside the detector; it shows each "
        "validator works on realistic formats and rejects the look-alikes listed, not real-world "
        "precision on unseen text",
        "texts_per_second": round(len(rows) / seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed-data", type=Path, default=SEED_DATA)
    parser.add_argument("--pii-per-kind", type=int, default=100)
    parser.add_argument("--pii-negatives", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    policy = load_policies(None).drift
    started = time.time()
    texts = {
        "seed": seed_prompts(args.seed_data),
        **{
            family: [t.prompt for t in generate(family, 600, seed=7)]
            for family in ("arithmetic", "unit_conversion", "comparison", "parity")
        },
    }
    rng = random.Random(3)
    texts["mixed"] = rng.sample(
        [t for f in ("arithmetic", "unit_conversion", "comparison", "parity") for t in texts[f]], 1200
    )
    # Human prompts within the generated prompts' length range (14-63 characters), so matching works.
    texts["seed_short"] = [t for t in texts["seed"] if 20 <= len(t) <= 63]
    corpora = {name: (t, embed(t)) for name, t in texts.items()}
    drift = run_drift(
        corpora, args.draws, policy.window, policy.embedding.permutations, policy.embedding.trigger_p_value
    )
    pii = run_pii(args.pii_per_kind, args.pii_negatives)
    result = {
        "benchmark": "policies",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "window": policy.window,
            "permutations": policy.embedding.permutations,
            "trigger_p_value": policy.embedding.trigger_p_value,
            "draws": args.draws,
        },
        "drift_power": drift["drift_power"],
        "drift_false_alarm_rate": drift["drift_false_alarm_rate"],
        "pii_precision": pii["pii_precision"],
        "pii_recall": pii["pii_recall"],
        "drift": drift,
        "pii": pii,
        "targets": TARGETS,
        "seconds": round(time.time() - started, 1),
    }
    missed = [
        k
        for k, target in TARGETS.items()
        if (result[k] > target if k == "drift_false_alarm_rate" else result[k] < target)  # type: ignore[operator]
    ]
    result["targets_missed"] = missed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "drift_power",
                    "drift_false_alarm_rate",
                    "pii_precision",
                    "pii_recall",
                    "targets_missed",
                )
            },
            indent=2,
        )
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
