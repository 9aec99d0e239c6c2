"""The two gates: may a training run start (training + safety + drift), may a candidate go live
(promotion + safety probes + output drift). Pure functions of their inputs, so a dry run and the
daemon decide the same way, and each reason names the policy field that decided it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from evolvd.policies.audit import Decision
from evolvd.policies.drift import DriftReport
from evolvd.policies.loader import PolicySet
from evolvd.policies.models import TrainingPolicy
from evolvd.policies.views import ExampleRow

USABLE_OUTCOMES = ("allow", "redact")


@dataclass(frozen=True)
class CandidateData:
    """A summary of the candidate data set: what the training gate decides on."""

    n_examples: int
    n_unscreened: int
    n_quarantined: int
    n_usable: int
    """Screened as allow or redact, and at or above training.min_confidence."""

    largest_cluster_share: float | None
    """Share of the usable examples in the biggest prompt cluster (None: too few to cluster)."""

    answer_diversity: float | None
    """Distinct answers / usable examples (None: no usable examples)."""

    label_gain: float | None = None
    """Estimated gain of the usable labels over the model's greedy answers: the mean over their
    prompts of (confidence - greedy share); None when no label was compared with a greedy answer."""

    label_gain_n: int = 0
    """Prompts the estimate rests on."""


def _normalised_answer(row: ExampleRow) -> str:
    return " ".join((row.answer if row.answer is not None else row.completion).lower().split())


def summarize(
    rows: Sequence[ExampleRow], policy: TrainingPolicy, embed: Callable[[Sequence[str]], np.ndarray]
) -> CandidateData:
    screened = [r for r in rows if r.safety_outcome is not None]
    usable = [
        r for r in screened if r.safety_outcome in USABLE_OUTCOMES and r.confidence >= policy.min_confidence
    ]
    largest: float | None = None
    # Clustered by distinct prompt (one prompt gives several examples: reasoning paths, a direct
    # answer), then each example counts in its prompt's cluster.
    prompts = sorted({r.prompt for r in usable})
    if len(prompts) >= policy.cluster_count:
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=policy.cluster_count, n_init=4, random_state=0).fit_predict(embed(prompts))
        cluster_of = dict(zip(prompts, (int(x) for x in labels), strict=True))
        largest = max(Counter(cluster_of[r.prompt] for r in usable).values()) / len(usable)
    # 1 - the share of the most common answer: 0 when every example teaches one answer (collapse),
    # 0.5 for balanced yes/no traffic. (Distinct answers per example would shrink towards 0 on any
    # closed answer set as the data grows, blocking healthy yes/no or A/B traffic for ever.)
    answers = Counter(_normalised_answer(r) for r in usable)
    diversity = 1.0 - max(answers.values()) / len(usable) if usable else None
    # One term per labeled prompt (its examples share one label), as evolvd.labeling.calibration reads it.
    compared = {r.event_id: r.confidence - r.greedy_share for r in usable if r.greedy_share is not None}
    gain = sum(compared.values()) / len(compared) if compared else None
    return CandidateData(
        n_examples=len(rows),
        n_unscreened=len(rows) - len(screened),
        n_quarantined=sum(r.safety_outcome == "quarantine" for r in screened),
        n_usable=len(usable),
        largest_cluster_share=largest,
        answer_diversity=diversity,
        label_gain=gain,
        label_gain_n=len(compared),
    )


def training_gate(
    policies: PolicySet,
    data: CandidateData,
    drift: DriftReport | None,
    seconds_since_last_run: float | None,
    subject_id: str = "next-run",
) -> Decision:
    """pass or block, with every reason that blocks (not only the first)."""
    training, safety = policies.training, policies.safety
    reasons: list[str] = []
    unsafe_share = (
        data.n_quarantined / (data.n_examples - data.n_unscreened)
        if data.n_examples > data.n_unscreened
        else 0.0
    )
    if unsafe_share > safety.max_unsafe_share:
        reasons.append(
            f"safety.max_unsafe_share: {unsafe_share:.3f} of the candidate data was quarantined"
            f" (limit {safety.max_unsafe_share})"
        )
    if drift is not None and drift.guard_tripped:
        reasons.append(
            f"drift.guard: MMD^2 {drift.mmd.mmd2:.4f} > guard_mmd {policies.drift.embedding.guard_mmd} "
            f"(p={drift.mmd.p_value:.4f}); a human should look at the recent traffic"
        )
    triggered = drift is not None and drift.trigger_fired
    needed = training.drift_min_new_examples if triggered else training.min_new_examples
    field = "drift_min_new_examples (drift trigger fired)" if triggered else "min_new_examples"
    if data.n_usable < needed:
        reasons.append(f"training.{field}: {data.n_usable} usable new examples, need {needed}")
    if data.largest_cluster_share is not None and data.largest_cluster_share > training.max_cluster_share:
        reasons.append(
            f"training.max_cluster_share: one prompt cluster holds {data.largest_cluster_share:.2f}"
            " of the data "
            f"(limit {training.max_cluster_share})"
        )
    if data.answer_diversity is not None and data.answer_diversity < training.min_answer_diversity:
        reasons.append(
            f"training.min_answer_diversity: {data.answer_diversity:.2f} (one answer holds"
            f" {1 - data.answer_diversity:.0%} of the examples; need {training.min_answer_diversity})"
        )
    gain, min_gain = data.label_gain, training.min_label_gain
    if min_gain is not None and gain is not None and gain < min_gain:
        reasons.append(
            f"training.min_label_gain: the labels are estimated to be right {gain:+.3f} more often than"
            f" the model's greedy answers over {data.label_gain_n} prompts (need {min_gain}): training"
            " on them would teach little beyond what it already answers"
        )
    if seconds_since_last_run is not None and seconds_since_last_run < training.min_interval_s:
        reasons.append(
            f"training.min_interval_s: last run started {seconds_since_last_run:.0f} s ago"
            f" (need {training.min_interval_s:.0f})"
        )
    inputs = {
        **asdict(data),
        "unsafe_share": round(unsafe_share, 4),
        "drift": None
        if drift is None
        else {
            "mmd2": drift.mmd.mmd2,
            "p_value": drift.mmd.p_value,
            "trigger": drift.trigger_fired,
            "guard": drift.guard_tripped,
        },
        "seconds_since_last_run": seconds_since_last_run,
    }
    policy_hash = "+".join(policies.hash_of(n) for n in ("training", "safety", "drift"))
    return Decision(
        "training", policy_hash, "run", subject_id, "block" if reasons else "pass", tuple(reasons), inputs
    )


@dataclass(frozen=True)
class ProbeScores:
    harmful_compliance: float
    """Share of the harmful probe set answered without a refusal (lower is safer)."""

    benign_refusal: float
    """Share of the benign probe set refused (lower is more helpful)."""


@dataclass(frozen=True)
class CandidateEvaluation:
    """What the evaluation stage measured for one candidate against the live adapter."""

    candidate: str
    live: str
    heldout_score: float
    live_heldout_score: float
    p_value: float
    forgetting_score: float
    live_forgetting_score: float
    safety: ProbeScores
    live_safety: ProbeScores
    output_divergence: float
    """Mean cosine distance of the candidate's probe answers from the base model's."""

    heldout_n: int = 0
    """Held-out items scored (a gate on zero items would decide on nothing)."""

    golden_score: float | None = None
    live_golden_score: float | None = None
    """The operator's golden set, when one is configured."""


def promotion_gate(policies: PolicySet, ev: CandidateEvaluation) -> Decision:
    """reject (with every failing reason), or canary / promote as the promotion policy says."""
    promotion, probes = policies.promotion, policies.safety.model_probes
    reasons: list[str] = []
    gain = ev.heldout_score - ev.live_heldout_score
    if gain < promotion.min_improvement:
        reasons.append(f"promotion.min_improvement: held-out gain {gain:+.3f} < {promotion.min_improvement}")
    if ev.p_value > promotion.max_p_value:
        reasons.append(f"promotion.max_p_value: paired test p={ev.p_value:.4f} > {promotion.max_p_value}")
    if ev.heldout_n < promotion.min_heldout:
        reasons.append(
            f"promotion.min_heldout: {ev.heldout_n} held-out items scored, need {promotion.min_heldout}"
        )
    if ev.golden_score is not None and ev.live_golden_score is not None:
        golden_drop = ev.live_golden_score - ev.golden_score
        if golden_drop > promotion.max_golden_drop:
            reasons.append(
                f"promotion.max_golden_drop: golden set dropped {golden_drop:.3f}"
                f" (limit {promotion.max_golden_drop})"
            )
    drop = ev.live_forgetting_score - ev.forgetting_score
    if drop > promotion.max_forgetting_drop:
        reasons.append(
            f"promotion.max_forgetting_drop: forgetting probes dropped {drop:.3f}"
            f" (limit {promotion.max_forgetting_drop})"
        )
    if promotion.require_safety_probes:
        more_compliance = ev.safety.harmful_compliance - ev.live_safety.harmful_compliance
        if more_compliance > probes.max_harmful_compliance_increase:
            reasons.append(
                "safety.model_probes.max_harmful_compliance_increase: answers"
                f" {more_compliance:+.3f} more of the "
                f"harmful probes than {ev.live} (limit {probes.max_harmful_compliance_increase})"
            )
        more_refusal = ev.safety.benign_refusal - ev.live_safety.benign_refusal
        if more_refusal > probes.max_benign_refusal_increase:
            reasons.append(
                "safety.model_probes.max_benign_refusal_increase: refuses"
                f" {more_refusal:+.3f} more of the benign "
                f"probes than {ev.live} (limit {probes.max_benign_refusal_increase})"
            )
    if ev.output_divergence > policies.drift.output.max_divergence:
        reasons.append(
            f"drift.output.max_divergence: answers diverge {ev.output_divergence:.3f} from the base model "
            f"(limit {policies.drift.output.max_divergence})"
        )
    outcome = "reject" if reasons else ("canary" if promotion.canary is not None else "promote")
    policy_hash = "+".join(policies.hash_of(n) for n in ("promotion", "safety", "drift"))
    return Decision("promotion", policy_hash, "adapter", ev.candidate, outcome, tuple(reasons), asdict(ev))
