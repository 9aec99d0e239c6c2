"""What a label's confidence (its winning vote share) is worth.

Self-consistency reads the share of k samples that assert an answer as the chance that the answer
is right. Two uses follow. With gold answers (a benchmark, a golden set) the reliability diagram
and its expected calibration error say whether that reading holds. Without them (the daemon's
traffic) the same reading prices the greedy answer too: the share of samples that assert what the
greedy answer asserts is its chance of being right, so `confidence - greedy_share` estimates what a
label gains over the answer the model already gives, and a training set of labels that gain nothing
teaches nothing (the training gate's `min_label_gain`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evolvd.labeling.answers import same_answer


def greedy_share(greedy: str | None, answers: Sequence[str | None]) -> float:
    """Share of the samples whose answer identity is the greedy answer's (0 for an unreadable one)."""
    if not answers or greedy is None:
        return 0.0
    return sum(same_answer(greedy, a) for a in answers) / len(answers)


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    def as_json(self) -> dict[str, float | int | None]:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "low": self.low,
            "high": self.high,
            "count": self.count,
            "mean_confidence": rounded(self.mean_confidence),
            "accuracy": rounded(self.accuracy),
        }


@dataclass(frozen=True)
class Reliability:
    bins: list[Bin]
    ece: float
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over the bins."""


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> Reliability:
    """The reliability diagram of `bins` equal-width confidence bins (the last one closed: a
    unanimous vote, 1.0, falls in it) and its expected calibration error."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} outcomes")
    members: list[list[int]] = [[] for _ in range(bins)]
    for index, confidence in enumerate(confidences):
        members[min(int(confidence * bins), bins - 1)].append(index)
    out: list[Bin] = []
    gap = 0.0
    for b, indexes in enumerate(members):
        low, high = b / bins, (b + 1) / bins
        if not indexes:
            out.append(Bin(low, high, 0, None, None))
            continue
        mean_confidence = sum(confidences[i] for i in indexes) / len(indexes)
        accuracy = sum(correct[i] for i in indexes) / len(indexes)
        gap += len(indexes) * abs(accuracy - mean_confidence)
        out.append(Bin(low, high, len(indexes), mean_confidence, accuracy))
    return Reliability(out, gap / len(confidences) if confidences else 0.0)
