"""Final answers out of chain-of-thought text, and the majority vote over them (LMSI).

The labeler asks the model to end with "The answer is X."; extraction looks for that marker first
and only then falls back to the text's last candidate, so a reasoning path that mentions several
numbers is read at its conclusion. An answer that cannot be read is None, never a guess.

A short answer's identity is what it asserts, not its sentence: "The largest planet is Jupiter."
and "Jupiter." are one answer, "The largest planet is Saturn." another. The words the question
already says are removed, the rest normalised (case, accents, articles, number words), and the
first run of new words is the answer. Spelling variants ("Jupitor") count with the answer they
misspell, never when their digits differ.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

import numpy as np
from rapidfuzz import fuzz
from text_to_num import alpha2digit

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
# 42, -3, 1,000, 2.5, 1e3, 3/4: a fraction or an exponent is part of the number, not a second one.
_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_LETTER = re.compile(r"(?:^|[\s(\[])([A-E])(?:$|[\s).:,\]])")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_OPTION_CONTENT = re.compile(r"(?:^|\s|\()([A-E])\)\s*(.+?)(?=\s+\(?[A-E]\)|[.?!]\s|[.?!]?$)")
_YES_NO_CLAIM = re.compile(
    r"^\s*(?:is|are|was|were|does|do|did|can|will|has|have)\s+([^?]+)\?", re.IGNORECASE
)
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")
_FILLER = {"a", "an", "the", "is", "are", "was", "were", "it", "this", "that"}
_NEGATION = {"not", "no", "never", "neither", "nor"}
# Words that frame a short answer without being part of it ("It is called X", "Hamlet was written
# by X"): the verbs factual questions ask with, in the forms an answer restates them.
_FRAME = _FILLER | {
    "be", "been", "its", "these", "those", "of", "in", "on", "at", "to", "for", "by", "with", "from",
    "as", "and", "or", "answer", "final", "i", "think", "our", "my", "your", "their", "his", "her",
    "called", "named", "known", "located", "situated", "written", "wrote", "painted", "composed",
    "invented", "discovered", "founded", "built", "made", "created", "directed", "developed",
}  # fmt: skip
_CONTRACTION = re.compile(r"(n['\u2019]t|['\u2019]s)\b", re.IGNORECASE)  # "It's", "isn't"
_TOKEN = re.compile(r"[^\W_]+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE = re.compile(r"[,;:()\[\]]|\s[-\u2013\u2014]\s")
MAX_SHORT_ANSWER_WORDS = 6
"""More new words than this in the answer's first sentence: a long answer, voted on by meaning."""
SPELLING_SIMILARITY = 85.0
"""rapidfuzz ratio (0-100) at or above which two short answers of 4+ letters are one answer spelt two ways."""


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
    """One spelling per value: 1,000 and 1e3 are 1000; 3/4, 6/8 and 0.75 are 0.75; 1/3 stays 1/3."""
    numerator, _, denominator = raw.replace(",", "").replace(" ", "").partition("/")
    try:
        top, bottom = Decimal(numerator), Decimal(denominator or "1")
    except InvalidOperation:
        return None
    if bottom == 0:
        return None
    if max(abs(top.adjusted()), abs(bottom.adjusted())) > 60:  # too large for an exact fraction: as written
        return str(top.normalize()) if not denominator else None
    value = Fraction(top) / Fraction(bottom)
    if value.denominator == 1:
        return str(value.numerator)
    rest = value.denominator
    for factor in (2, 5):
        while rest % factor == 0:
            rest //= factor
    if rest != 1:
        return f"{value.numerator}/{value.denominator}"  # no finite decimal
    return format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")


def _number(text: str, conclusion: str, marked: bool, question: str) -> str | None:
    text, conclusion = alpha2digit(text, "en"), alpha2digit(conclusion, "en")  # "forty-two" is 42
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
    # Unmarked, a short answer is its first sentence: "Jupiter is the largest planet. It has ...".
    answer = conclusion if marked else _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    return short_answer_identity(answer, question)


def normal_words(text: str) -> list[str]:
    """Lower case, accents off, number words as digits ("twenty one" -> 21), punctuation dropped."""
    text = _CONTRACTION.sub(lambda m: " not" if m.group(1).lower() == "n't" else " is", text)
    decomposed = unicodedata.normalize("NFKD", alpha2digit(text, "en").lower())
    return _TOKEN.findall("".join(c for c in decomposed if not unicodedata.combining(c)))


def short_answer_identity(answer: str, question: str = "") -> str | None:
    """What a short answer asserts: its first run of words that neither the question says nor only
    frame the sentence. None for an answer that restates the question or runs long."""
    asked = set(normal_words(question))
    new = [w for w in normal_words(answer) if w not in asked and w not in _FRAME]
    if not new or len(new) > MAX_SHORT_ANSWER_WORDS:
        return None
    for clause in _CLAUSE.split(answer):
        run: list[str] = []
        for word in normal_words(clause):
            if word in asked or word in _FRAME:
                if run:
                    break
                continue
            run.append(word)
        if run:
            return " ".join(run)
    return None


def is_long_answer(text: str, question: str = "") -> bool:
    """Whether an answer to a short question says more than a short answer can (more than
    MAX_SHORT_ANSWER_WORDS new words in its first sentence): such answers are voted on by meaning.
    An answer that only restates the question is short: it asserts nothing, and has no vote."""
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    asked = set(normal_words(question))
    return (
        len([w for w in normal_words(first) if w not in asked and w not in _FRAME]) > MAX_SHORT_ANSWER_WORDS
    )


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two extracted answers are one answer: equal, or one spelling variant of the other
    (4+ characters, rapidfuzz ratio >= SPELLING_SIMILARITY, and exactly the same digits)."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    if min(len(a), len(b)) < 4 or re.sub(r"\D", "", a) != re.sub(r"\D", "", b):
        return False
    return fuzz.ratio(a, b) >= SPELLING_SIMILARITY


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
    keys: tuple[str | None, ...] = ()
    """Per sample, what the vote counted it as: its answer identity, or `meaning:<cluster>`."""
    method: Literal["answer", "meaning"] = "answer"
    """answer: samples counted by answer identity; meaning: clustered by meaning."""


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Self-consistency over extracted answers; ties go to the answer reached first. A spelling
    variant counts for the answer it varies (the more frequent spelling names the group)."""
    answers = merge_spellings(answers)
    readable = [a for a in answers if a is not None]
    failures = len(answers) - len(readable)
    if not readable:
        return Vote(None, 0.0, (), {}, failures, tuple(answers))
    counts = Counter(readable)
    winner = max(counts, key=lambda a: (counts[a], -readable.index(a)))
    winners = tuple(i for i, a in enumerate(answers) if a == winner)
    return Vote(winner, len(winners) / len(answers), winners, dict(counts), failures, tuple(answers))


def merge_spellings(answers: Sequence[str | None]) -> list[str | None]:
    """Each answer as the spelling its group counts under (the group's most frequent spelling)."""
    counts = Counter(a for a in answers if a is not None)
    order = {a: i for i, a in reversed(list(enumerate(answers))) if a is not None}  # first position
    names: list[str] = []
    spelling: dict[str, str] = {}
    for answer in sorted(counts, key=lambda a: (-counts[a], order[a])):
        spelling[answer] = next((n for n in names if same_answer(answer, n)), answer)
        if spelling[answer] == answer:
            names.append(answer)
    return [None if a is None else spelling[a] for a in answers]


_PROPER_NOUN = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][A-Za-z]+")
"""A capitalised word inside a sentence (not its first word, which every sentence capitalises)."""

MEANING_THRESHOLD = 0.15
"""Cosine distance under which two long answers are one meaning (bench/meaning.py: chosen on 40
labelled paraphrase and contradiction pairs by F0.5, precision first, because merging a contradiction
inflates a label's confidence while splitting a paraphrase only lowers it)."""


def asserted_terms(text: str, question: str = "") -> set[str]:
    """The checkable specifics an answer asserts beyond the question: its numbers (one spelling per
    value) and the names inside its sentences, lower-cased."""
    numbers = {_canonical_number(n) for n in _NUMBER.findall(alpha2digit(text, "en"))}
    asked = set(normal_words(question))
    names = {w.lower() for w in _PROPER_NOUN.findall(text) if w.lower() not in asked}
    return {t for t in numbers | names if t}


def contradicts(a: str, b: str, question: str = "") -> bool:
    """Whether two answers assert different specifics: each names a number or a name the other does
    not say at all ("... is Jupiter" against "... is Saturn"). Embeddings put such answers closer
    together than most paraphrases, because they share every other word."""

    def saying(text: str) -> tuple[str, str]:  # its words, and its digits without thousands commas
        return f" {' '.join(normal_words(text))} ", alpha2digit(text, "en").replace(",", "")

    def says(said: tuple[str, str], term: str) -> bool:
        return term in said[0] or term in said[1]

    mine, theirs = asserted_terms(a, question), asserted_terms(b, question)
    said_a, said_b = saying(a), saying(b)
    return any(not says(said_b, t) for t in mine - theirs) and any(not says(said_a, t) for t in theirs - mine)


def semantic_vote(
    texts: Sequence[str],
    embed: Callable[[Sequence[str]], np.ndarray],
    threshold: float = MEANING_THRESHOLD,
    question: str = "",
) -> Vote:
    """Free-form self-consistency: cluster answers by meaning, the largest cluster's medoid wins.

    Agglomerative clustering (average linkage) on MiniLM cosine distances; answers closer than
    `threshold` are one answer said differently, unless they contradict each other's specifics
    (`contradicts`): such a pair is kept as far apart as distances go.
    """
    if not texts:
        return Vote(None, 0.0, (), {}, 0, (), "meaning")
    if len(texts) == 1:
        return Vote(texts[0], 1.0, (0,), {"0": 1}, 0, ("meaning:0",), "meaning")
    from sklearn.cluster import AgglomerativeClustering

    vectors = embed(texts)
    distances = np.clip(1.0 - vectors @ vectors.T, 0.0, 2.0)
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if distances[i, j] < threshold and contradicts(texts[i], texts[j], question):
                distances[i, j] = distances[j, i] = 2.0
    labels = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=threshold
    ).fit_predict(distances)
    counts = Counter(int(label) for label in labels)
    biggest = max(counts, key=lambda c: (counts[c], -list(labels).index(c)))
    members = [i for i, label in enumerate(labels) if label == biggest]
    medoid = min(members, key=lambda i: float(distances[i, members].sum()))
    keys = tuple(f"meaning:{int(label)}" for label in labels)
    counts_by_key = {str(k): v for k, v in counts.items()}
    return Vote(texts[medoid], len(members) / len(texts), tuple(members), counts_by_key, 0, keys, "meaning")
