"""The paired comparison of candidate and live on the same items: exact McNemar test.

Only the discordant items carry information (one model right, the other wrong); under the null
hypothesis each is a fair coin, so the one-sided p-value that the candidate is better is a
binomial tail. scipy's binomtest computes it exactly (no normal approximation on small sets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedResult:
    n: int
    candidate_score: float
    live_score: float
    candidate_only: int
    """Items only the candidate got right."""
    live_only: int
    """Items only the live model got right."""
    p_value: float
    """One-sided: the candidate is better than live (1.0 when no item is discordant)."""


def paired_compare(candidate: Sequence[bool], live: Sequence[bool]) -> PairedResult:
    if len(candidate) != len(live):
        raise ValueError(f"paired results differ in length: {len(candidate)} vs {len(live)}")
    n = len(candidate)
    candidate_only = sum(c and not lv for c, lv in zip(candidate, live, strict=True))
    live_only = sum(lv and not c for c, lv in zip(candidate, live, strict=True))
    discordant = candidate_only + live_only
    p_value = 1.0 if discordant == 0 else float(binomtest(candidate_only, discordant, 0.5, "greater").pvalue)
    return PairedResult(
        n=n,
        candidate_score=sum(candidate) / n if n else 0.0,
        live_score=sum(live) / n if n else 0.0,
        candidate_only=candidate_only,
        live_only=live_only,
        p_value=p_value,
    )
