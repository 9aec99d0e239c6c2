"""Does the loop run on open-ended traffic? The free-form run of the self-improvement experiment.

It streams real human-written instructions (the self-instruct seed tasks, bench/data/
seed_tasks.jsonl) through Kafka into the same daemon and harness as bench/selfimprove.py: K cycles
of label -> policies -> train -> evaluate -> promote. These prompts have no gold answer, so no
accuracy is claimed. What is measured, on held-out instructions the loop never sees, before the
first cycle and after each one:

- self-judge score: the base model critiques each answer of the served model with the labeler's own
  critique prompt and score parsing (1-10). The judge stays the base model, so an adapter cannot
  grade itself up; unreadable scores are counted, never guessed;
- diversity: distinct-2 (distinct word bigrams / all bigrams) over the answers, and their mean
  pairwise MiniLM cosine distance, so a collapse onto one stock answer shows;
- mean answer length in words, and the forgetting and safety probes as in the main run.

From the buffer, per cycle: labels, their vote confidence (the largest meaning cluster's share),
the self-critique scores of the chosen answers, and the examples the training run used.

    python bench/freeform.py                 # 2 cycles of 16 instructions, 16 held out
    python bench/freeform.py --small ...     # minutes: the test suite's harness check

Results: bench/results/freeform.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import duckdb
from selfimprove import (
    Cycle,
    Rig,
    Settings,
    add_run_arguments,
    cycle_event_prefix,
    loop_daemon,
    probe_scores,
    run_cycle,
)

from evolvd.connectors.vllm_client import VLLMClient
from evolvd.embeddings import embed
from evolvd.judge import Judge
from evolvd.labeling.pipeline import critique_answer
from evolvd.policies.loader import load_policies
from evolvd.policies.probes import greedy_answers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "freeform.json"
SEED_TASKS = ROOT / "bench" / "data" / "seed_tasks.jsonl"

# The full run: the main run's settings, with critique on so that labels carry self-judge scores, and
# room for answers longer than a sum. Sized for vLLM's LoRA path on a 2-core CPU, where cycle 2 labels
# and every measurement after cycle 1 run: about 35 tokens/s with 64 sequences in flight (5 with one),
# against 100-180 on the base model. A first attempt with 32 prompts of 128 label tokens per cycle
# labeled 4 of cycle 2's prompts in 15 minutes, and was stopped.
FULL: dict[str, Any] = {
    "variant": "sc+critique",
    "cycles": 2,
    "prompts_per_cycle": 16,
    "heldout_per_family": 16,
    "answer_max_tokens": 128,
    "label_max_tokens": 96,
}
SMALL: dict[str, Any] = {
    **FULL,
    "cycles": 1,
    "prompts_per_cycle": 4,
    "heldout_per_family": 2,
    "max_steps": 3,
    "batch_size": 4,
    "answer_max_tokens": 48,
    "label_max_tokens": 64,
    "critique_max_tokens": 32,
    "samples": 3,
    "probe_limit": 2,
    "loose_training_filters": True,
}


@dataclass
class OpenEndedMeasurement:
    judge_score: float | None
    """Mean 1-10 score the base model gave the served answers; None when none was readable."""
    judge_scored: int
    distinct_2: float
    embedding_spread: float
    mean_words: float
    forgetting_acc: float
    safety_score: float
    seconds: float


def load_instructions(path: Path) -> list[str]:
    """Each seed task as a user would send it: the instruction, then its input when it has one."""
    prompts = []
    for line in path.read_text().splitlines():
        if line.strip():
            task = json.loads(line)
            given = task["instances"][0]["input"].strip() if task.get("instances") else ""
            prompts.append(f"{task['instruction']}\n\n{given}" if given else task["instruction"])
    return prompts


def distinct_2(texts: Sequence[str]) -> float:
    bigrams = [pair for t in texts for pair in pairwise(t.split())]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def embedding_spread(texts: Sequence[str]) -> float:
    """Mean pairwise cosine distance: 0 when every answer says the same thing."""
    if len(texts) < 2:
        return 0.0
    vectors = embed(texts)
    similarity = vectors @ vectors.T
    n = len(texts)
    return float((n * n - similarity.sum()) / (n * (n - 1)))  # the diagonal's 1s cancel the n


def measure_open_ended(
    rig: Rig, judge: VLLMClient, judge_model: str, prompts: Sequence[str], settings: Settings
) -> OpenEndedMeasurement:
    started = time.monotonic()
    answers = greedy_answers(rig.gateway, "evolvd", prompts, settings.answer_max_tokens)
    policies = load_policies(rig.policies)  # the experiment's own edits: the judge's critique settings

    def score(pair: tuple[str, str]) -> float | None:
        critique = critique_answer(
            Judge(judge, judge_model), pair[0], pair[1], policies.labeling, policies.safety.principles, None
        )
        return critique.score.value

    with ThreadPoolExecutor(settings.concurrency) as pool:
        scores = [s for s in pool.map(score, zip(prompts, answers, strict=True)) if s is not None]
    forgetting, safety = probe_scores(rig.gateway, rig.policies)
    return OpenEndedMeasurement(
        judge_score=sum(scores) / len(scores) if scores else None,
        judge_scored=len(scores),
        distinct_2=distinct_2(answers),
        embedding_spread=embedding_spread(answers),
        mean_words=sum(len(a.split()) for a in answers) / len(answers),
        forgetting_acc=forgetting,
        safety_score=safety,
        seconds=round(time.monotonic() - started, 1),
    )


def buffer_figures(buffer_path: Path, cycles: Sequence[Cycle]) -> dict[int, dict[str, Any]]:
    """Per cycle, what the labeler made of its prompts."""
    out: dict[int, dict[str, Any]] = {}
    with duckdb.connect(str(buffer_path), read_only=True) as con:
        for cycle in cycles:
            like = cycle_event_prefix(cycle.cycle) + "%"
            labels, confidence = con.execute(
                "SELECT count(*), avg(confidence) FROM labels WHERE event_id LIKE ? AND answer IS NOT NULL",
                [like],
            ).fetchone() or (0, None)
            critique, scored = con.execute(
                "SELECT avg(score), count(score) FROM critiques"
                " WHERE event_id LIKE ? AND refinement_id IS NULL AND score IS NOT NULL",
                [like],
            ).fetchone() or (None, 0)
            examples = con.execute(
                "SELECT count(*) FROM runs r JOIN dataset_examples d"
                " ON d.dataset_id = r.dataset_id AND NOT d.replay WHERE r.run_id = ?",
                [cycle.run_id],
            ).fetchone()
            out[cycle.cycle] = {
                "labels": labels,
                "label_confidence": round(confidence, 4) if confidence is not None else None,
                "label_critique_score": round(critique, 3) if critique is not None else None,
                "label_critiques_scored": scored,
                "examples_trained": examples[0] if examples else 0,
            }
    return out


def experiment(
    settings: Settings, source: Path, bootstrap: str | None, attach: tuple[str, str] | None
) -> dict[str, Any]:
    instructions = load_instructions(source)
    random.Random(settings.seed).shuffle(instructions)
    # One "family" here: the held-out instructions are the first heldout_per_family after a shuffle.
    heldout, stream = instructions[: settings.heldout_per_family], instructions[settings.heldout_per_family :]
    if len(stream) < settings.cycles * settings.prompts_per_cycle:
        raise SystemExit(f"{source} has {len(stream)} instructions to stream; the run needs more")
    wall_started = time.monotonic()
    with ExitStack() as stack:
        rig = stack.enter_context(loop_daemon(settings, bootstrap, attach))
        serving = rig.admin.status()["serving"]
        judge = stack.enter_context(
            closing(VLLMClient(serving["url"], timeout_s=600, api_key=rig.daemon.vllm_key))
        )
        judge_model = serving["base_model"]["name"]
        print(f"[freeform] {settings.variant}: measuring the base model {judge_model}", flush=True)
        rows: list[tuple[str, OpenEndedMeasurement, Cycle | None]] = [
            ("base", measure_open_ended(rig, judge, judge_model, heldout, settings), None)
        ]
        cycles: list[Cycle] = []
        for n in range(1, settings.cycles + 1):
            chunk = rig.choose_prompts(stream, settings.prompts_per_cycle)
            stream = [p for p in stream if p not in chunk]
            cycle = run_cycle(n, rig.admin, rig.bootstrap, rig.topic, chunk)
            measured = measure_open_ended(rig, judge, judge_model, heldout, settings)
            cycle.stage_seconds["measurement"] = measured.seconds
            cycles.append(cycle)
            rows.append((str(n), measured, cycle))
            print(
                f"[freeform] cycle {n}: run {cycle.run_status} ({cycle.run_reason}) -> {cycle.decision};"
                f" judge {measured.judge_score}, distinct-2 {measured.distinct_2:.3f}",
                flush=True,
            )
        rig.stop()
        from_buffer = buffer_figures(rig.buffer_path, cycles)
    return {
        "benchmark": "freeform",
        "source": source.name,
        "heldout_n": len(heldout),
        "settings": settings.as_json(),
        "judge": judge_model,
        "cycles": [
            {
                "cycle": name,
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(m).items()},
                **({**from_buffer[c.cycle], "prompts": c.prompts, **c.outcome()} if c is not None else {}),
            }
            for name, m, c in rows
        ],
        "seconds": round(time.monotonic() - wall_started, 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SEED_TASKS, help="self-instruct style JSONL")
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--prompts-per-cycle", type=int)
    add_run_arguments(parser, RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings(**(SMALL if args.small else FULL))
    for name in ("cycles", "prompts_per_cycle"):
        if (value := getattr(args, name)) is not None:
            setattr(settings, name, value)
    result = experiment(
        settings, args.source, args.bootstrap_servers, tuple(args.attach_vllm) if args.attach_vllm else None
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
