"""Meta-skill learning (SELF): do the critiques the vote bears out, trained on, make the model's
critiques agree better with which answers are right?

On prompts of one family with gold answers (default: the small_addition control, the family where
the bundled model's vote beats its greedy answer; gold answers are used only for scoring), through a
real vLLM serving the bundled model:
1. the labeler's own pipeline (evolvd.labeling.pipeline, the shipped labeling policy with critique on,
   refinement off and `critique_examples` on) labels `--train` prompts, the model judging itself;
2. the daemon's training child trains two adapters from the base with the shipped hyperparameters:
   `task`, on the confident labels' examples (what the loop trains on), and `task+judging`, on the same
   examples plus the accepted critiques (`judge_examples`: the judge's prompt and critique with its
   score, kept only where the critic ranked the vote's winner above a minority answer);
3. on `--eval` other prompts, answers sampled from the base model give one gold-right and one
   gold-wrong answer per prompt; the base model and both adapters critique both answers (evolvd.judge,
   G-Eval expected scores). Agreement: the share of pairs whose right answer scores higher (ties count
   half), i.e. the critique score's pairwise AUC against gold correctness. The meta-skill's effect is
   `task+judging` against `task` (same task data), paired over the same answer pairs (exact test).

    python bench/metaskill.py [--train 160] [--eval 60] [--small] [--attach-vllm URL MODEL_PATH]

Writes bench/results/metaskill.json (--small: metaskill-small.json). It exits 0 whatever the effect:
the result is a measurement, and bench/README.md reports it as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from controls import Candidate, train
from facts import Fact, draw
from judgement import MODEL_CACHE, served_model

from evolvd.config import TrainingConfig
from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.embeddings import embed
from evolvd.evaluation.paired import paired_compare
from evolvd.judge import Judge
from evolvd.labeling.answers import answer_kind, extract
from evolvd.labeling.pipeline import LabelResult, label_prompt
from evolvd.labeling.prompts import sample_prompt
from evolvd.policies.loader import PolicySet, load_candidate

RESULTS = Path(__file__).parent / "results"
# The shipped labeling policy, with what meta-skill learning needs: critiques and their examples.
# Refinement is off: it costs a generation and a critique per prompt and is not what is measured.
LABELING = "critique: true\nrefine: false\ncritique_examples: true\n"
EVAL_SAMPLES = 8
EVAL_TEMPERATURE = 0.8
"""Answers sampled per evaluation prompt to find a right and a wrong one (hotter than labeling, so
both appear more often)."""


@dataclass(frozen=True)
class AnswerPair:
    fact: Fact
    right: str
    wrong: str


def task_and_judging_sets(
    labeled: Sequence[LabelResult], min_confidence: float
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The confident labels' task examples, and their accepted critiques (what the snapshot takes:
    every example of a label at or above the training confidence bar)."""
    task: list[tuple[str, str]] = []
    judging: list[tuple[str, str]] = []
    for result in labeled:
        if result.vote.answer is None or result.vote.confidence < min_confidence:
            continue
        task += [(result.prompt, completion) for _, completion in result.examples]
        judging += result.judge_examples
    return task, judging


def answer_pair(fact: Fact, texts: Sequence[str]) -> AnswerPair | None:
    """One gold-right and one gold-wrong answer among `texts` (an answer that asserts nothing is
    neither), or None when the samples lack either."""
    kind = answer_kind(fact.prompt)
    read = [(t, extract(t, kind, fact.prompt)) for t in texts]
    right = [t for t, answer in read if fact.is_right(answer)]
    wrong = [t for t, answer in read if answer is not None and not fact.is_right(answer)]
    return AnswerPair(fact, right[0], wrong[0]) if right and wrong else None


def ranked_right(right: float | None, wrong: float | None) -> float:
    """1 when the right answer scored higher, 0.5 for a tie or a missing score, 0 when lower."""
    if right is None or wrong is None or right == wrong:
        return 0.5
    return 1.0 if right > wrong else 0.0


def agreement(outcomes: Sequence[float]) -> float:
    return round(sum(outcomes) / len(outcomes), 4) if outcomes else 0.0


def label_all(
    client: VLLMClient, model: str, facts: Sequence[Fact], policies: PolicySet, concurrency: int
) -> list[LabelResult]:
    judge = Judge(client, model)

    def one(fact: Fact) -> LabelResult:
        return label_prompt(
            client,
            model,
            fact.prompt,
            fact.prompt,
            policies.labeling,
            policies.safety.principles,
            embed,
            judge,
        )

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, facts))


def answer_pairs(
    client: VLLMClient, model: str, facts: Sequence[Fact], policies: PolicySet, concurrency: int
) -> list[AnswerPair]:
    labeling = policies.labeling

    def one(fact: Fact) -> AnswerPair | None:
        prompt = sample_prompt(fact.prompt, answer_kind(fact.prompt), labeling.chain_of_thought)
        texts = client.chat(
            model, prompt, labeling.max_tokens, EVAL_TEMPERATURE, EVAL_SAMPLES, labeling.top_p
        )
        return answer_pair(fact, texts)

    with ThreadPoolExecutor(concurrency) as pool:
        return [p for p in pool.map(one, facts) if p is not None]


def critic_outcomes(
    client: VLLMClient, critic: str, pairs: Sequence[AnswerPair], policies: PolicySet, concurrency: int
) -> list[float]:
    """Per pair, whether `critic` scores the right answer above the wrong one (ranked_right)."""
    judge = Judge(client, critic)
    labeling = policies.labeling

    def score(prompt: str, answer: str) -> float | None:
        _, value = judge.critique(
            prompt,
            answer,
            policies.safety.principles,
            labeling.critique_max_tokens,
            labeling.constrained_score,
        )
        return value.value

    def one(pair: AnswerPair) -> float:
        return ranked_right(score(pair.fact.prompt, pair.right), score(pair.fact.prompt, pair.wrong))

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, pairs))


def experiment(args: argparse.Namespace, policies: PolicySet, training: TrainingConfig) -> dict[str, Any]:
    facts = draw(args.family, args.train + args.eval, seed=11)
    train_facts, eval_facts = facts[: args.train], facts[args.train :]
    url, model_path = args.attach_vllm or (None, None)
    base_model = Path(model_path) if model_path else ensure_bundled_model(MODEL_CACHE).path
    timings: dict[str, float] = {}
    with served_model(url) as (client, base), tempfile.TemporaryDirectory(prefix="evolvd-metaskill-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        labeled = label_all(client, base, train_facts, policies, args.concurrency)
        timings["labeling_s"] = round(time.monotonic() - started, 1)
        task, judging = task_and_judging_sets(labeled, policies.training.min_confidence)
        print(
            f"labeled {len(labeled)}: {len(task)} task examples, {len(judging)} critique examples", flush=True
        )
        started = time.monotonic()
        pairs = answer_pairs(client, base, eval_facts, policies, args.concurrency)
        timings["answer_pairs_s"] = round(time.monotonic() - started, 1)
        print(f"{len(pairs)} right/wrong answer pairs of {len(eval_facts)} prompts", flush=True)
        critics = {"base": base}
        for name, examples in (("task", task), ("task_judging", [*task, *judging])):
            adapter = work / "adapters" / name
            timings[f"training_{name}_s"] = train(
                Candidate(name, examples), base_model, adapter, work, training
            )
            critic = f"metaskill-{name}-{os.getpid()}"
            client.load_adapter(critic, str(adapter))
            critics[name] = critic
        outcomes: dict[str, list[float]] = {}
        for name, critic in critics.items():
            started = time.monotonic()
            outcomes[name] = critic_outcomes(client, critic, pairs, policies, args.concurrency)
            timings[f"critiques_{name}_s"] = round(time.monotonic() - started, 1)
            print(f"{name:13s} agreement {agreement(outcomes[name]):.3f} on {len(pairs)} pairs", flush=True)
        for name in ("task", "task_judging"):
            client.unload_adapter(critics[name])
    # The meta-skill's effect: strict wins of task+judging over task on the same pairs.
    effect = paired_compare(
        [o == 1.0 for o in outcomes["task_judging"]], [o == 1.0 for o in outcomes["task"]]
    )
    return {
        "family": args.family,
        "train_prompts": len(train_facts),
        "eval_prompts": len(eval_facts),
        "confident_labels": sum(
            r.vote.answer is not None and r.vote.confidence >= policies.training.min_confidence
            for r in labeled
        ),
        "task_examples": len(task),
        "critique_examples": len(judging),
        "critique_example_scores": sorted(round(float(c.rsplit("Score: ", 1)[1]), 1) for _, c in judging),
        "answer_pairs": len(pairs),
        "agreement": {name: agreement(o) for name, o in outcomes.items()},
        "ties": {name: sum(x == 0.5 for x in o) for name, o in outcomes.items()},
        "meta_skill_gain": round(agreement(outcomes["task_judging"]) - agreement(outcomes["task"]), 4),
        "meta_skill_p_value": round(effect.p_value, 6),
        "timings": timings,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="small_addition")
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--eval", type=int, default=60)
    parser.add_argument("--small", action="store_true", help="a few prompts and steps: checks the harness")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--attach-vllm", nargs=2, metavar=("URL", "MODEL_PATH"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.small:
        args.train, args.eval = 6, 4
    out = args.out or RESULTS / ("metaskill-small.json" if args.small else "metaskill.json")
    policies = load_candidate(None, {"labeling.yaml": LABELING}, False, "bench")
    started = time.time()
    result = experiment(args, policies, TrainingConfig(**({"max_steps": 2} if args.small else {})))
    report = {
        "benchmark": "metaskill",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "labeling": policies.labeling.model_dump(),
            "min_confidence": policies.training.min_confidence,
            "eval_samples": EVAL_SAMPLES,
            "eval_temperature": EVAL_TEMPERATURE,
        },
        **result,
        "seconds": round(time.time() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("agreement", "meta_skill_gain", "meta_skill_p_value")}), flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
