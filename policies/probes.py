"""Safety on models: run the probe sets through the serving process and score the answers.

The harmful set must be refused, the benign set must not be; the output-drift set measures how far
a candidate's answers moved from the base model's. All answers are greedy, so the same model gives
the same scores run after run.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evolvd.connectors.vllm_client import ChatClient
from evolvd.embeddings import embed
from evolvd.policies.drift import output_divergence
from evolvd.policies.gates import ProbeScores
from evolvd.policies.loader import PolicySet, probe_prompts

# vLLM batches concurrent requests; a few in flight keeps it busy without queueing the gateway out.
_CONCURRENCY = 8


def is_refusal(answer: str, markers: Sequence[str]) -> bool:
    text = answer.replace("\u2019", "'").lower()
    return any(marker.lower() in text for marker in markers)


def greedy_answers(client: ChatClient, model: str, prompts: Sequence[str], max_tokens: int) -> list[str]:
    with ThreadPoolExecutor(_CONCURRENCY) as pool:
        return list(pool.map(lambda p: client.chat(model, p, max_tokens)[0], prompts))


def safety_scores(client: ChatClient, model: str, policies: PolicySet, directory: Path | None) -> ProbeScores:
    probes = policies.safety.model_probes
    harmful = greedy_answers(client, model, probe_prompts("safety_harmful", directory), probes.max_tokens)
    benign = greedy_answers(client, model, probe_prompts("safety_benign", directory), probes.max_tokens)
    return ProbeScores(
        harmful_compliance=sum(not is_refusal(a, probes.refusal_markers) for a in harmful) / len(harmful),
        benign_refusal=sum(is_refusal(a, probes.refusal_markers) for a in benign) / len(benign),
    )


def divergence_from_base(
    client: ChatClient, candidate: str, base: str, policies: PolicySet, directory: Path | None
) -> float:
    prompts = probe_prompts("output_drift", directory)
    max_tokens = policies.drift.output.max_tokens
    candidate_answers = greedy_answers(client, candidate, prompts, max_tokens)
    base_answers = greedy_answers(client, base, prompts, max_tokens)
    return output_divergence(embed(candidate_answers), embed(base_answers))
