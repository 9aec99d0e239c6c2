"""The probes two models disagree on, asked again of both models side by side before a guard decides.

Greedy answers from vLLM on a CPU are not batch-invariant: the same model's answer text changed for
58% of the forgetting probes between a request alone and one among the evaluation's concurrent
requests, and one forgetting probe flipped its verdict on the batch alone (bench/noise_floor.py).
The candidate's and the live model's probe answers come from different batches (the live ones often
from an earlier evaluation, through the greedy memo), and the probe guards reject on one or two
flipped probes, so that noise could decide a promotion. Every probe on which the two verdicts differ
is therefore asked again of both models side by side: the two requests for one probe together (one
engine step holds both, the same prompt through each model), one probe after another, no memo; the
re-asked answers decide it. The probes both models agree on keep their batched answers: re-asking
them cannot change a paired comparison's discordant items.

The pair is alone only while nothing else uses the server; the gateway's and the labeler's traffic
can still share a step with it, which is the residual noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from evolvd.connectors.vllm_client import ChatClient
from evolvd.policies.loader import PolicySet
from evolvd.policies.probes import SafetyRun, scored_run
from evolvd.policies.probes import refused as refused_by


def answer_side_by_side(
    client: ChatClient, models: tuple[str, str], prompts: Sequence[str], max_tokens: int
) -> list[tuple[str, str]]:
    """Each prompt's greedy answers from both models, asked together; the prompts one after another."""
    candidate, live = models
    answered: list[tuple[str, str]] = []
    with ThreadPoolExecutor(2, thread_name_prefix="evolvd-reask") as pool:
        for prompt in prompts:
            first = pool.submit(client.chat, candidate, prompt, max_tokens)
            second = pool.submit(client.chat, live, prompt, max_tokens)
            answered.append((first.result()[0], second.result()[0]))
    return answered


def settle_discordant(
    client: ChatClient,
    models: tuple[str, str],
    prompts: Sequence[str],
    verdicts: tuple[list[bool], list[bool]],
    verdict_of: Callable[[int, str], bool],
    max_tokens: int,
) -> dict[int, tuple[str, str]]:
    """Re-decide, in place, the items whose two verdicts differ, from both models' answers asked
    side by side.

    `models`: (candidate, live); `verdicts`: their per-item verdicts, updated in place;
    `verdict_of(index, answer)`: an answer's verdict on item `index`. Returns the re-asked items'
    (candidate, live) answers by index."""
    disagreed = [i for i, (a, b) in enumerate(zip(*verdicts, strict=True)) if a != b]
    answers = answer_side_by_side(client, models, [prompts[i] for i in disagreed], max_tokens)
    for index, (candidate_answer, live_answer) in zip(disagreed, answers, strict=True):
        verdicts[0][index] = verdict_of(index, candidate_answer)
        verdicts[1][index] = verdict_of(index, live_answer)
    return dict(zip(disagreed, answers, strict=True))


def settle_flips(
    client: ChatClient, models: tuple[str, str], runs: tuple[SafetyRun, SafetyRun], policies: PolicySet
) -> tuple[SafetyRun, SafetyRun, int]:
    """The two runs (candidate, live) with every flipped probe asked again of both models side by
    side (one flipped refusal decides the guard, and batch noise can flip one), and how many probes
    were asked again."""
    probes = policies.safety.model_probes
    candidate, live = (list(run.answers) for run in runs)
    refused = ([a.refused for a in candidate], [a.refused for a in live])
    prompts = [a.prompt for a in candidate]
    reasked = settle_discordant(
        client,
        models,
        prompts,
        refused,
        lambda index, answer: refused_by(probes, prompts[index], answer),
        probes.max_tokens,
    )
    for index, (candidate_answer, live_answer) in reasked.items():
        for answers, answer, verdict in (
            (candidate, candidate_answer, refused[0]),
            (live, live_answer, refused[1]),
        ):
            answers[index] = replace(answers[index], answer=answer, refused=verdict[index])
    return scored_run(candidate), scored_run(live), len(reasked)
