"""Self-labeling quality and speed on verifiable tasks, against the plain baselines in one run.

One run starts a real daemon (managed vLLM on the bundled model; its own labeler off), then on the
task families evolvd generates (gold answers used only for scoring here):
1. base greedy accuracy: one greedy chain-of-thought answer per prompt;
2. plain vLLM throughput: the labeler's sampling requests (k answers each) sent straight to vLLM at
   `--concurrency`, generated tokens per second read from vLLM's own counter;
3. the labeler: the full pipeline (vote, critique, refine, pairs, examples) into a real DuckDB file
   at the same concurrency, tokens per second the same way, every request it sends recorded; then
   the vote's accuracy, and the accuracy of the labels the training policy would accept
   (confidence >= min_confidence and a safety screen that does not quarantine);
4. the same requests replayed straight to vLLM at the same concurrency: what vLLM alone does with
   the labeler's request mix. `labeler_vs_vllm_throughput_ratio` is (3) / (4): whether the labeler
   keeps the server as busy as a plain client would. The replay runs second, so vLLM's prefix cache
   already holds its prompts: if anything, the baseline is favoured.

    python bench/labels.py [--per-family 24] [--concurrency 8]

Exits 1 when the labeler keeps vLLM less busy than the plain client (ratio < 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from daemon_process import DaemonProcess

from evolvd.buffer import DuckDBBuffer
from evolvd.config import JudgeConfig
from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.connectors.vllm_client import VLLMClient
from evolvd.embeddings import embed
from evolvd.judge import JudgeSource
from evolvd.labeling.answers import answer_kind, extract
from evolvd.labeling.labeler import Labeler
from evolvd.labeling.prompts import direct_completion, sample_prompt
from evolvd.policies.loader import PolicySet, load_policies
from evolvd.policies.screen import SafetyScreen
from evolvd.workload import Task, generate

RESULTS = Path(__file__).parent / "results" / "labels.json"
MODEL_CACHE = Path(__file__).resolve().parents[1] / "var" / "test-cache" / "models"
FAMILIES = ("arithmetic", "small_addition", "comparison", "unit_conversion", "parity")
TARGET_RATIO = 0.9


def generated_tokens(client: VLLMClient) -> float:
    total = 0.0
    for line in client.metrics_text().splitlines():
        if line.startswith("vllm:generation_tokens_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def timed_tokens(client: VLLMClient, work: Callable[[], None]) -> tuple[float, float]:
    """(generated tokens per second, seconds) of `work`, from vLLM's own counter."""
    before, started = generated_tokens(client), time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return (generated_tokens(client) - before) / seconds, seconds


def greedy_answers(
    client: VLLMClient, model: str, tasks: list[Task], policies: PolicySet, concurrency: int
) -> list[str | None]:
    max_tokens = policies.labeling.max_tokens

    def one(task: Task) -> str | None:
        kind = answer_kind(task.prompt)
        prompt = sample_prompt(task.prompt, kind, policies.labeling.chain_of_thought)
        return extract(client.chat(model, prompt, max_tokens)[0], kind, task.prompt)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, tasks))


def plain_sampling(
    client: VLLMClient, model: str, tasks: list[Task], policies: PolicySet, concurrency: int
) -> None:
    lp = policies.labeling

    def one(task: Task) -> None:
        prompt = sample_prompt(task.prompt, answer_kind(task.prompt))
        client.chat(model, prompt, lp.max_tokens, lp.temperature, lp.samples, lp.top_p)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, tasks))


@dataclass(frozen=True)
class Request:
    """One request the labeler sent: a `chat` (args: model, prompt, max_tokens, temperature, n,
    top_p), a constrained `choose` (args: model, messages, choices) or a judge's score logprobs
    (`next_token_logprobs`: model, messages, top_logprobs)."""

    method: str
    args: tuple[Any, ...]


class RecordingChat:
    """The labeler's client, recording every request so the same mix can be replayed straight to vLLM."""

    def __init__(self, client: VLLMClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.requests: list[Request] = []

    def _record(self, method: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self.requests.append(Request(method, args))

    def chat(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        temperature: float = 0.0,
        n: int = 1,
        top_p: float = 1.0,
    ) -> list[str]:
        self._record("chat", (model, prompt, max_tokens, temperature, n, top_p))
        return self._client.chat(model, prompt, max_tokens, temperature, n, top_p)

    def choose(self, model: str, messages: list[dict[str, str]], choices: list[str]) -> str:
        self._record("choose", (model, messages, choices))
        return self._client.choose(model, messages, choices)

    def next_token_logprobs(
        self, model: str, messages: list[dict[str, str]], top_logprobs: int = 20
    ) -> dict[str, float]:
        self._record("next_token_logprobs", (model, messages, top_logprobs))
        return self._client.next_token_logprobs(model, messages, top_logprobs)


def replay(client: VLLMClient, requests: list[Request], concurrency: int) -> None:
    """The labeler's own requests, sent straight to vLLM at the same concurrency, with none of the
    labeler's work between them (no voting, parsing or writes, no waiting on a previous stage)."""

    def one(request: Request) -> None:
        getattr(client, request.method)(*request.args)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))


def buffer_with_events(path: Path, tasks: list[Task]) -> DuckDBBuffer:
    """A real buffer holding one pending event per task (event id `t<index>`)."""
    buffer = DuckDBBuffer(path)
    for i, task in enumerate(tasks):
        buffer.cursor().execute(
            "INSERT INTO events (id, topic, kafka_partition, kafka_offset, prompt, prompt_hash)"
            " VALUES (?, 'bench', 0, ?, ?, 'h')",
            [f"t{i}", i, task.prompt],
        )
    return buffer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-family", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    policies = load_policies(None)
    tasks = [t for family in FAMILIES for t in generate(family, args.per_family, seed=11)]
    base = ensure_bundled_model(MODEL_CACHE)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="evolvd-bench-labels-") as tmp:
        env = {
            "EVOLVD_SERVING__ENABLED": "true",
            "EVOLVD_SERVING__MODEL_PATH": str(base.path),
            "EVOLVD_GATEWAY__PORT": "0",
            "EVOLVD_LABELING__ENABLED": "false",
        }
        daemon = DaemonProcess(Path(tmp) / "data", env).start(timeout_s=600)
        try:
            serving = daemon.status()["serving"]
            client = VLLMClient(serving["url"], timeout_s=600, api_key=daemon.vllm_key)
            model = serving["live"]
            greedy: list[str | None] = []
            greedy_tps, greedy_s = timed_tokens(
                client,
                lambda: greedy.extend(greedy_answers(client, model, tasks, policies, args.concurrency)),
            )
            plain_tps, plain_s = timed_tokens(
                client, lambda: plain_sampling(client, model, tasks, policies, args.concurrency)
            )
            buffer = buffer_with_events(Path(tmp) / "labels.duckdb", tasks)
            recording = RecordingChat(client)
            labeler = Labeler(
                buffer,
                lambda: policies,
                lambda: (recording, model),
                embed,
                None,
                len(tasks),
                args.concurrency,
                JudgeSource(JudgeConfig()),
            )
            labeled: list[int] = []
            labeler_tps, labeler_s = timed_tokens(client, lambda: labeled.append(labeler.run_once()))
            replay_tps, replay_s = timed_tokens(
                client, lambda: replay(client, recording.requests, args.concurrency)
            )
            labels = dict(buffer.cursor().execute("SELECT event_id, answer FROM labels").fetchall())
            confidence = dict(buffer.cursor().execute("SELECT event_id, confidence FROM labels").fetchall())
            counts = buffer.table_counts()
            refinements = (
                buffer.cursor().execute("SELECT accepted, count(*) FROM refinements GROUP BY ALL").fetchall()
            )
            scores = (
                buffer.cursor()
                .execute("SELECT score_status, count(*) FROM critiques GROUP BY ALL")
                .fetchall()
            )
            buffer.close()
            client.close()
        finally:
            daemon.stop(timeout_s=120)
    screen = SafetyScreen(policies.safety)
    per_task: dict[str, Any] = {}
    for family in FAMILIES:
        idx = [i for i, t in enumerate(tasks) if t.family == family]
        accepted = [
            i
            for i in idx
            if labels.get(f"t{i}") is not None
            and confidence[f"t{i}"] >= policies.training.min_confidence
            and screen.screen(tasks[i].prompt, direct_completion(str(labels[f"t{i}"]))).outcome
            != "quarantine"
        ]
        row: dict[str, Any] = {
            "n": len(idx),
            "greedy_acc": sum(greedy[i] == tasks[i].gold for i in idx) / len(idx),
            "vote_acc": sum(labels.get(f"t{i}") == tasks[i].gold for i in idx) / len(idx),
            "accepted": len(accepted),
            "accepted_acc": (sum(labels[f"t{i}"] == tasks[i].gold for i in accepted) / len(accepted))
            if accepted
            else None,
        }
        if row["accepted_acc"] is None or row["accepted_acc"] <= row["greedy_acc"]:
            row["note"] = "accepted labels are not more accurate than greedy answers here: " + (
                "no label reached min_confidence"
                if not accepted
                else "the model's majority is confidently wrong on this family"
            )
        per_task[family] = row
        print(
            f"{family:16s} n={row['n']} greedy={row['greedy_acc']:.2f} vote={row['vote_acc']:.2f}"
            f" accepted={row['accepted']} accepted_acc={row['accepted_acc']}",
            flush=True,
        )
    # The target compares like with like: the labeler against vLLM serving the labeler's own request
    # mix at the same concurrency. Critique and refinement requests are long prompts with short
    # answers, so fewer tokens are generated per second than by sampling alone, labeler or not: the
    # sampling-only rate is reported beside it as a reference.
    ratio = labeler_tps / replay_tps if replay_tps else 0.0
    result = {
        "benchmark": "labels",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "per_family": args.per_family,
            "concurrency": args.concurrency,
            **policies.labeling.model_dump(),
        },
        "labeler_vs_vllm_throughput_ratio": round(ratio, 3),
        "throughput": {
            "plain_vllm_tokens_per_s": round(plain_tps, 1),
            "plain_vllm_seconds": round(plain_s, 1),
            "same_requests_vllm_tokens_per_s": round(replay_tps, 1),
            "same_requests_vllm_seconds": round(replay_s, 1),
            "requests": len(recording.requests),
            "labeler_vs_sampling_only_ratio": round(labeler_tps / plain_tps, 3) if plain_tps else 0.0,
            "labeler_tokens_per_s": round(labeler_tps, 1),
            "labeler_seconds": round(labeler_s, 1),
            "labeler_prompts_per_s": round(labeled[0] / labeler_s, 3),
            "greedy_tokens_per_s": round(greedy_tps, 1),
            "greedy_seconds": round(greedy_s, 1),
        },
        "tasks": per_task,
        "rows": {
            t: counts[t]
            for t in (
                "samples",
                "labels",
                "critiques",
                "refinements",
                "preference_pairs",
                "training_examples",
            )
        },
        "refinements": {str(k): v for k, v in refinements},
        "critique_scores": {str(k): v for k, v in scores},
        "min_confidence": policies.training.min_confidence,
        "target_ratio": TARGET_RATIO,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("labeler_vs_vllm_throughput_ratio", "throughput", "rows")}, indent=2
        )
    )
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
