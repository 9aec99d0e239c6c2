"""One prompt through the self-labeling stages, with the live model: sample k answers and vote
(LMSI), critique the winner against the principles, refine it (SELF), build a preference pair and
the training examples. Pure of storage: labeler.write_result stores the result in one transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from evolvd.judge import Judge, JudgeModel
from evolvd.judge_prompts import Score, critique_completion, critique_prompt
from evolvd.labeling.answers import (
    AnswerKind,
    Vote,
    answer_kind,
    extract,
    is_long_answer,
    majority_vote,
    merge_spellings,
    same_answer,
    semantic_vote,
)
from evolvd.labeling.calibration import greedy_share
from evolvd.labeling.prompts import direct_completion, refine_prompt, sample_prompt
from evolvd.policies.models import LabelingPolicy

LABELER_VERSION = "evolvd-labeler/1"


class ChatModel(JudgeModel, Protocol):
    """What the labeler needs from the serving process (VLLMClient has it): answers, and what the live
    model needs to judge itself (constrained choices, logprobs)."""


@dataclass(frozen=True)
class Sample:
    text: str
    answer: str | None


@dataclass(frozen=True)
class Critique:
    text: str
    score: Score
    sample_index: int | None
    """The critiqued sample, or None when the refinement was critiqued."""


@dataclass(frozen=True)
class Refinement:
    text: str
    answer: str | None
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Pair:
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    source: Literal["critique", "vote"]
    """critique: the scores are the model's 1-10 judgements; vote: they are vote counts."""

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score


@dataclass
class LabelResult:
    event_id: str
    prompt: str
    model: str
    kind: AnswerKind
    params: dict[str, Any]
    samples: list[Sample]
    vote: Vote
    critiques: list[Critique] = field(default_factory=list)
    refinement: Refinement | None = None
    refinement_critique: Critique | None = None
    pair: Pair | None = None
    examples: list[tuple[str, str]] = field(default_factory=list)
    """(format, completion): cot, direct, refined."""
    greedy_answer: str | None = None
    """The answer identity of the model's greedy answer (labeling.greedy_baseline)."""
    greedy_share: float | None = None
    """Share of the samples asserting the greedy answer; None: not asked (see evolvd.labeling.calibration)."""
    judge_examples: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, completion): the accepted critiques as examples of judging (labeling.critique_examples)."""


def principles_hash(principles: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(principles).encode()).hexdigest()[:16]


def label_prompt(
    chat: ChatModel,
    model: str,
    event_id: str,
    prompt: str,
    policy: LabelingPolicy,
    principles: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    judge: Judge,
) -> LabelResult:
    """Sample, vote, and (by the policy) critique, refine and pair one prompt. `chat` and `model`
    answer (the live model); `judge` critiques and scores (the live model itself by default)."""
    kind = answer_kind(prompt)
    params = {
        "samples": policy.samples,
        "temperature": policy.temperature,
        "top_p": policy.top_p,
        "max_tokens": policy.max_tokens,
        "chain_of_thought": policy.chain_of_thought,
        "kind": kind,
        "principles_hash": principles_hash(principles),
    }
    texts = chat.chat(
        model,
        sample_prompt(prompt, kind, policy.chain_of_thought),
        policy.max_tokens,
        policy.temperature,
        policy.samples,
        policy.top_p,
    )
    # Each sample keeps the answer identity the vote counted it under (a misspelling: its group's).
    answers = merge_spellings([extract(t, kind, prompt) for t in texts])
    samples = [Sample(t, a) for t, a in zip(texts, answers, strict=True)]
    vote = majority_vote(answers)
    if vote.answer is None and (kind == "free_form" or (kind == "span" and _mostly_long(texts, prompt))):
        # Long answers to a short question have no short answer to count: vote on meaning. Short
        # ones that only restate the question ("The symbol of helium is helium.") assert nothing, and
        # merging them by meaning would label the restatement with full confidence.
        vote = semantic_vote(texts, embed, question=prompt)
    result = LabelResult(event_id, prompt, model, kind, params, samples, vote)
    if vote.answer is None:
        return result  # nothing to learn from: the label row records the failed vote
    if policy.greedy_baseline and vote.method == "answer":
        _greedy_baseline(chat, model, result, policy)
    # The answer trained on: the medoid for a semantic vote, else the first path that won.
    best = next((i for i in vote.winners if samples[i].text == vote.answer), vote.winners[0])
    if policy.vote_pairs:
        result.pair = _vote_pair(samples, vote, best, policy.vote_pair_min_margin)
    if policy.critique:
        _critique_and_refine(chat, model, judge, result, best, policy, principles)
    _examples(result, best, policy)
    return result


def _greedy_baseline(chat: ChatModel, model: str, result: LabelResult, policy: LabelingPolicy) -> None:
    """The answer the model gives today (greedy, the same prompt as the samples), and the share of
    the samples that assert it: what the label is worth beside it (evolvd.labeling.calibration)."""
    prompt = sample_prompt(result.prompt, result.kind, policy.chain_of_thought)
    text = chat.chat(model, prompt, policy.max_tokens)[0]
    answer = extract(text, result.kind, result.prompt)
    # Spelt as the vote spelt it, so a misspelling of the winner counts as the winner.
    result.greedy_answer = next((k for k in result.vote.counts if same_answer(answer, k)), answer)
    result.greedy_share = greedy_share(answer, [s.answer for s in result.samples])


def _mostly_long(texts: Sequence[str], prompt: str) -> bool:
    return sum(is_long_answer(t, prompt) for t in texts) * 2 > len(texts)


def critique_answer(
    judge: Judge,
    prompt: str,
    answer: str,
    policy: LabelingPolicy,
    principles: Sequence[str],
    index: int | None,
) -> Critique:
    """The judge's critique of `answer` and its 1-10 score (by default the model judges itself; also
    the free-form benchmark's judge). `index` is the sample judged, None for a refinement."""
    text, score = judge.critique(
        prompt, answer, principles, policy.critique_max_tokens, policy.constrained_score
    )
    return Critique(text, score, index)


def _critique_and_refine(
    chat: ChatModel,
    model: str,
    judge: Judge,
    result: LabelResult,
    best: int,
    policy: LabelingPolicy,
    principles: Sequence[str],
) -> None:
    winner = result.samples[best]
    first = critique_answer(judge, result.prompt, winner.text, policy, principles, best)
    result.critiques.append(first)
    minority = [i for i, s in enumerate(result.samples) if i not in result.vote.winners]
    if minority and result.pair is None:  # a critique pair needs a scored minority answer to reject
        result.critiques.append(
            critique_answer(
                judge, result.prompt, result.samples[minority[0]].text, policy, principles, minority[0]
            )
        )
    chosen_text, chosen_score = winner.text, first.score.value
    if policy.refine and first.score.value is not None:
        refined_text = chat.chat(
            model, refine_prompt(result.prompt, winner.text, first.text, result.kind), policy.max_tokens
        )[0]
        rescored = critique_answer(judge, result.prompt, refined_text, policy, principles, None)
        result.refinement_critique = rescored
        refined_answer = extract(refined_text, result.kind, result.prompt)
        accepted, reason = _judge_refinement(first.score, rescored.score, refined_answer, result)
        result.refinement = Refinement(refined_text, refined_answer, accepted, reason)
        if accepted:
            chosen_text, chosen_score = refined_text, rescored.score.value
    if len(result.critiques) == 2 and chosen_score is not None:
        rejected = result.critiques[1]
        if rejected.score.value is not None and chosen_score - rejected.score.value >= policy.pair_min_margin:
            assert rejected.sample_index is not None
            rejected_text = result.samples[rejected.sample_index].text
            result.pair = Pair(chosen_text, rejected_text, chosen_score, rejected.score.value, "critique")
    if policy.critique_examples:
        result.judge_examples = [
            (critique_prompt(result.prompt, result.samples[i].text, principles), critique_completion(text, s))
            for i, text, s in _accepted_critiques(result)
        ]


def _accepted_critiques(result: LabelResult) -> list[tuple[int, str, float]]:
    """The critiques whose judgement the vote bears out (SELF's meta-skill data, filtered without
    labels): the winning answer's and a minority answer's critiques when the winner scored higher
    (the critic ranked them as the vote did; G-Eval scores are fractional, so the order, not a
    preference pair's margin, is the test), and the critique whose refinement was accepted (its
    advice made a better answer that still agrees with the vote). Each as (sample index, critique,
    score): both are critiques of samples, and both have a score."""
    scored: list[tuple[int, str, float]] = []
    for c in result.critiques:  # the winner's critique first, then the minority answer's
        if c.sample_index is not None and c.score.value is not None:
            scored.append((c.sample_index, c.text, c.score.value))
    if len(scored) == 2 and scored[0][2] > scored[1][2]:
        return scored
    refined = result.refinement is not None and result.refinement.accepted
    return scored[:1] if refined else []  # a refinement is only written from a scored first critique


def _vote_pair(samples: Sequence[Sample], vote: Vote, best: int, min_margin: int) -> Pair | None:
    """The winning path against the least-voted path that reached another readable answer: the vote
    is the preference (self-consistency preference optimization, Prasad et al. 2024), so no judge
    is asked. None for a vote on meanings (no answers to count) or too close a vote."""
    if samples[best].answer is None or vote.answer is None:
        return None
    # (votes for its answer, index) of every path that reached another readable answer.
    losers = [
        (vote.counts[s.answer], i)
        for i, s in enumerate(samples)
        if s.answer is not None and s.answer != vote.answer
    ]
    if not losers:
        return None
    rejected_votes, rejected = min(losers)
    chosen_votes = vote.counts[vote.answer]
    if chosen_votes - rejected_votes < min_margin:
        return None
    return Pair(samples[best].text, samples[rejected].text, chosen_votes, rejected_votes, "vote")


def _judge_refinement(
    before: Score, after: Score, answer: str | None, result: LabelResult
) -> tuple[bool, str]:
    if after.value is None:
        return False, f"the refinement's score is {after.status}"
    assert before.value is not None
    if after.value <= before.value:
        return False, f"re-score {after.value:g} is not above {before.value:g}"
    # The winner had an extractable answer exactly when the vote counted answers (not meanings).
    extractable = result.samples[result.vote.winners[0]].answer is not None
    if extractable and not same_answer(answer, result.vote.answer):
        return False, f"the refined answer {answer!r} disagrees with the majority {result.vote.answer!r}"
    return True, f"re-score {after.value:g} > {before.value:g}"


def _examples(result: LabelResult, best: int, policy: LabelingPolicy) -> None:
    """Mixed formats, as LMSI trains on: reasoning paths, the direct answer, the refinement."""
    if result.kind == "free_form" or result.samples[best].answer is None:
        result.examples.append(("direct", result.samples[best].text))
    else:
        path_format = "cot" if policy.chain_of_thought else "sampled"
        for index in result.vote.winners[: policy.cot_examples_per_prompt]:
            result.examples.append((path_format, result.samples[index].text))
        assert result.vote.answer is not None
        result.examples.append(("direct", direct_completion(result.vote.answer)))
    if result.refinement is not None and result.refinement.accepted:
        result.examples.append(("refined", result.refinement.text))
