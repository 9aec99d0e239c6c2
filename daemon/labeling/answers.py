"""Final answers out of chain-of-thought text, and the majority vote over them (LMSI).

The labeler asks the model to end with "The answer is X."; extraction looks for that marker first
and only then falls back to the text's last candidate, so a reasoning path that mentions several
numbers is read at its conclusion. An answer that cannot be read is None, never a guess.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

import numpy as np

AnswerKind = Literal["number", "option", "yes_no", "span", "free_form"]

_OPTIONS = re.compile(r"(?:^|\s|\()([A-E])\)\s*\S")
_YES_NO_QUESTION = re.compile(
    r"\byes or no\b|^\s*(is|are|does|do|did|can|could|was|were|will|would|should|has|have|had)\b[^?]*\?\s*$",
    re.IGNORECASE,
)
_NUMERIC_QUESTION = re.compile(
    r"\b(how many|how much|how long|how far|what is -?\d|calculate|compute|sum of|product of|difference)\b"
    r"|\d\s*[-+*/x×]\s*\d",
    re.IGNORECASE,
)
_SHORT_QUESTION = re.compile(r"^\s*(what|which|who|where|when|name)\b", re.IGNORECASE)
_MARKER = re.compile(r"(?:final answer|the answer is|answer is|answer\s*:)\s*(?::|is)?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
_LETTER = re.compile(r"(?:^|[\s(\[])([A-E])(?:$|[\s).:,\]])")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_OPTION_CONTENT = re.compile(r"(?:^|\s|\()([A-E])\)\s*(.+?)(?=\s+\(?[A-E]\)|[.?!]\s|[.?!]?$)")
_YES_NO_CLAIM = re.compile(
    r"^\s*(?:is|are|was|were|does|do|did|can|will|has|have)\s+([^?]+)\?", re.IGNORECASE
)
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_FILLER = {"a", "an", "the", "is", "are", "was", "were", "it", "this", "that"}
_NEGATION = {"not", "no", "never", "neither", "nor"}


def answer_kind(prompt: str) -> AnswerKind:
    """What kind of final answer the prompt asks for, read from its wording."""
    if len(_OPTIONS.findall(prompt)) >= 2:
        return "option"
    if _YES_NO_QUESTION.search(prompt):
        return "yes_no"
    if _NUMERIC_QUESTION.search(prompt):
        return "number"
    if _SHORT_QUESTION.search(prompt) and len(prompt) < 160:
        return "span"
    return "free_form"


def _conclusion(text: str) -> tuple[str, bool]:
    """The part of the text holding the final answer, and whether an explicit marker found it."""
    markers = list(_MARKER.finditer(text))
    if markers:
        return markers[-1].group(1).strip(), True
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else ""), False


def _canonical_number(raw: str) -> str | None:
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        return None
    normal = value.normalize()
    return format(normal, "f") if normal == normal.to_integral() else str(normal)


def _number(text: str, conclusion: str, marked: bool, question: str) -> str | None:
    if marked and "=" in conclusion:
        # "the answer is 277 + 1 = 288 hours": the result, after the last "=", is the answer.
        conclusion = conclusion.rsplit("=", 1)[1]
    numbers = _NUMBER.findall(conclusion)
    if numbers:
        return _canonical_number(numbers[0] if marked else numbers[-1])
    if marked:  # the model named its answer and it is not a number: no guess from elsewhere
        return None
    everywhere = _NUMBER.findall(text)
    return _canonical_number(everywhere[-1]) if everywhere else None


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _option(text: str, conclusion: str, marked: bool, question: str) -> str | None:
    letters = _LETTER.findall(conclusion)
    if letters:
        return letters[0] if marked or len(set(letters)) == 1 else None
    # "The larger number is 738." names an option by its content, not its letter: read it when
    # exactly one option's text appears in the conclusion.
    said = f" {' '.join(_words(conclusion))} "
    named = {
        letter
        for letter, content in _OPTION_CONTENT.findall(question)
        if (words := _words(content)) and f" {' '.join(words)} " in said
    }
    return named.pop() if len(named) == 1 else None


def _yes_no(text: str, conclusion: str, marked: bool, question: str) -> str | None:
    words = {w.lower() for w in _YES_NO.findall(conclusion)}
    if words:
        return words.pop() if len(words) == 1 else None
    # "Is 1171 an odd number?" answered "1171 is an odd number.": the question's own claim restated
    # is a yes, and negated ("is not an odd number") a no. Every content word of the claim must be
    # there; a different claim ("1171 is an even number") reads as nothing, never as a guess.
    claim = _YES_NO_CLAIM.search(question)
    if claim is None:
        return None
    needed = set(_words(claim.group(1))) - _FILLER
    said = set(_words(conclusion))
    if not needed or not needed <= said:
        return None
    return "no" if _NEGATION & said or "n't" in conclusion.lower() else "yes"


def _span(text: str, conclusion: str, marked: bool, question: str) -> str | None:
    span = re.sub(r"\s+", " ", conclusion).strip(" .!\"'*").lower()
    return span if marked and span and len(span.split()) <= 8 else None


_EXTRACTORS: dict[AnswerKind, Callable[[str, str, bool, str], str | None]] = {
    "number": _number,
    "option": _option,
    "yes_no": _yes_no,
    "span": _span,
}


def extract(text: str, kind: AnswerKind, question: str = "") -> str | None:
    """The final answer in canonical form (`42`, `B`, `yes`, `paris`), or None when there is none.

    With the question, an option named by its content ("the larger is 738") and a yes/no question's
    claim restated ("1171 is an odd number") are read too. Free-form answers have no canonical form:
    they are voted on by meaning (semantic_vote).
    """
    extractor = _EXTRACTORS.get(kind)
    if extractor is None:
        return None
    conclusion, marked = _conclusion(text)
    return extractor(text, conclusion, marked, question)


@dataclass(frozen=True)
class Vote:
    answer: str | None
    """The winning answer (for free-form: the medoid text of the largest cluster); None: no vote."""

    confidence: float
    """Share of the samples that agree with the winner (0 when nothing could be extracted)."""

    winners: tuple[int, ...]
    """Indexes of the samples that reached the winning answer (the candidate training targets)."""

    counts: dict[str, int]
    extraction_failures: int


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Plain self-consistency over extracted answers; ties go to the answer reached first."""
    readable = [a for a in answers if a is not None]
    failures = len(answers) - len(readable)
    if not readable:
        return Vote(None, 0.0, (), {}, failures)
    counts = Counter(readable)
    winner = max(counts, key=lambda a: (counts[a], -readable.index(a)))
    winners = tuple(i for i, a in enumerate(answers) if a == winner)
    return Vote(winner, len(winners) / len(answers), winners, dict(counts), failures)


def semantic_vote(
    texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray], threshold: float = 0.25
) -> Vote:
    """Free-form self-consistency: cluster answers by meaning, the largest cluster's medoid wins.

    Agglomerative clustering (average linkage) on MiniLM cosine distances; answers closer than
    `threshold` are one answer said differently.
    """
    if not texts:
        return Vote(None, 0.0, (), {}, 0)
    if len(texts) == 1:
        return Vote(texts[0], 1.0, (0,), {"0": 1}, 0)
    from sklearn.cluster import AgglomerativeClustering

    vectors = embed(texts)
    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    labels = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=threshold
    ).fit_predict(distances)
    counts = Counter(int(label) for label in labels)
    biggest = max(counts, key=lambda c: (counts[c], -list(labels).index(c)))
    members = [i for i, label in enumerate(labels) if label == biggest]
    medoid = min(members, key=lambda i: float(distances[i, members].sum()))
    return Vote(
        texts[medoid], len(members) / len(texts), tuple(members), {str(k): v for k, v in counts.items()}, 0
    )
