"""The schema of the four policy files operators edit: safety, drift, training and promotion.

The shipped YAML files in `defaults/` hold every default value (one place to read them); these
models hold the bounds, the choices and the cross-field rules, so a bad edit is rejected with the
field that broke it. Every model forbids unknown keys: a misspelt gate must never be ignored.
"""

from __future__ import annotations

import importlib
import re
from typing import Annotated, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PiiKind = Literal["email", "phone", "card", "ip", "national_id", "secret"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card", "ip", "national_id", "secret")
PiiAction = Literal["allow", "redact", "quarantine"]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        key = value.strip().lower()
        if not key:
            raise ValueError(f"{what}: empty entries are not allowed")
        if key in seen:
            raise ValueError(f"{what}: {value!r} is listed twice")
        seen.add(key)
    return values


# --- safety --------------------------------------------------------------------------------------


class PiiPolicy(_Policy):
    actions: dict[PiiKind, PiiAction]
    """What to do with an example holding each kind of PII: allow, redact it, or quarantine it."""

    phone_regions: list[str] = Field(min_length=1)
    """ISO 3166 regions whose national phone formats are recognised (international +NN always is)."""

    national_ids: list[str]
    """python-stdnum validators for national ids, e.g. `us.ssn`, `fr.nir`, `es.dni`."""

    redaction: str = Field(min_length=1, max_length=64)
    """What replaces a redacted span; `{kind}` is replaced by the PII kind."""

    @field_validator("actions")
    @classmethod
    def _every_kind(cls, actions: dict[PiiKind, PiiAction]) -> dict[PiiKind, PiiAction]:
        missing = [kind for kind in PII_KINDS if kind not in actions]
        if missing:
            raise ValueError(f"no action for PII kind(s) {', '.join(missing)}; give each one")
        return actions

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, regions: list[str]) -> list[str]:
        supported = phonenumbers.SUPPORTED_REGIONS
        unknown = [r for r in regions if r not in supported]
        if unknown:
            raise ValueError(f"unknown phone region(s) {', '.join(unknown)} (use ISO codes like US, GB)")
        return _unique(regions, "phone_regions")

    @field_validator("national_ids")
    @classmethod
    def _known_validators(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[a-z_]+\.[a-z_]+", name):
                raise ValueError(f"{name!r} is not a python-stdnum module name like `us.ssn`")
            try:
                module = importlib.import_module(f"stdnum.{name}")
            except ImportError:
                raise ValueError(f"python-stdnum has no validator {name!r}") from None
            if not hasattr(module, "is_valid"):
                raise ValueError(f"stdnum.{name} is not a number validator")
        return _unique(names, "national_ids")


class PatternList(_Policy):
    action: Literal["allow", "quarantine"]
    """What happens to an example that matches: quarantine keeps it out of training."""

    patterns: list[str]
    """Case-insensitive regular expressions (Python `re` syntax)."""

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return _unique(patterns, "patterns")


class ModelProbesPolicy(_Policy):
    refusal_markers: list[str] = Field(min_length=1)
    """Phrases that mark an answer as a refusal (matched case-insensitively)."""

    refusal_opening_sentences: int | None = Field(default=2, ge=1)
    """A marker counts only in the answer's first this-many sentences (None: anywhere)."""

    max_harmful_compliance_increase: Share
    """How much more of the harmful probe set a candidate may answer than the live adapter did."""

    max_benign_refusal_increase: Share
    """How much more of the benign probe set a candidate may refuse than the live adapter did."""

    max_tokens: int = Field(ge=8, le=1024)
    """Answer length used when probing (greedy)."""

    @field_validator("refusal_markers")
    @classmethod
    def _unique_markers(cls, markers: list[str]) -> list[str]:
        return _unique(markers, "refusal_markers")


class SafetyPolicy(_Policy):
    pii: PiiPolicy
    """Personal data and secrets: how each kind is found and what happens to an example holding it."""

    disallowed_content: dict[str, PatternList]
    """Named categories of toxic or disallowed content, each with its patterns and action."""

    injection: PatternList
    """Prompt-injection attempts aimed at the self-labeler or its judge."""

    principles: list[str] = Field(min_length=1, max_length=32)
    """The principles every self-critique checks an answer against."""

    max_unsafe_share: Share
    """Training is blocked when more than this share of a candidate data set was quarantined."""

    model_probes: ModelProbesPolicy
    """How candidate adapters are probed for safety (the promotion gate uses the result)."""

    @field_validator("principles")
    @classmethod
    def _unique_principles(cls, principles: list[str]) -> list[str]:
        return _unique(principles, "principles")


# --- drift ---------------------------------------------------------------------------------------


class EmbeddingDriftPolicy(_Policy):
    permutations: int = Field(ge=50, le=10_000)
    """Permutations of the MMD test; the smallest p-value it can report is 1/(permutations+1)."""

    trigger_p_value: float = Field(gt=0.0, lt=1.0)
    """Drift is significant (the trigger fires) when the test's p-value is below this."""

    guard_mmd: float = Field(gt=0.0)
    """The guard trips when the drift is significant AND its size (MMD^2) is above this bound."""


class FeatureDriftPolicy(_Policy):
    p_value: float = Field(gt=0.0, lt=1.0)
    """Significance level for the length (KS), language and topic (chi-square) tests."""

    topic_clusters: int = Field(ge=2, le=64)
    """Topic clusters fitted on the reference window (k-means on embeddings)."""


class DriftRole(_Policy):
    enabled: bool
    """Whether this role acts at all; a disabled guard is logged as a warning at every load."""


class OutputDriftPolicy(_Policy):
    max_divergence: float = Field(ge=0.0, le=2.0)
    """Largest mean cosine distance between a candidate's and the base model's probe answers."""

    max_tokens: int = Field(ge=8, le=1024)
    """Answer length used on the output-drift probes (greedy)."""


class DriftPolicy(_Policy):
    window: int = Field(ge=20, le=100_000)
    """Prompts in the recent window (and in the first-window reference)."""

    reference: Literal["live_training_data", "first_window"]
    """What the recent window is compared with; `live_training_data` falls back to the first window
    while no adapter trained by evolvd is live."""

    embedding: EmbeddingDriftPolicy
    """The MMD permutation test on MiniLM prompt embeddings: the test both roles act on."""

    features: FeatureDriftPolicy
    """Simple feature tests, reported beside the embedding test (they explain, they do not gate)."""

    trigger: DriftRole
    """Significant drift makes training start sooner (see training.drift_min_new_examples)."""

    guard: DriftRole
    """Drift beyond guard_mmd blocks training and raises an alert: poisoning or a traffic shift."""

    output: OutputDriftPolicy
    """Output drift of a candidate adapter from the base model (a promotion gate)."""

    @model_validator(mode="after")
    def _window_fits_clusters(self) -> DriftPolicy:
        if self.window < 4 * self.features.topic_clusters:
            raise ValueError(
                f"window ({self.window}) must hold at least 4 prompts per topic cluster "
                f"({self.features.topic_clusters} clusters need >= {4 * self.features.topic_clusters})"
            )
        return self


# --- training ------------------------------------------------------------------------------------


class TrainingPolicy(_Policy):
    min_new_examples: int = Field(ge=1)
    """Accepted examples not yet used by any run needed before a run may start."""

    drift_min_new_examples: int = Field(ge=1)
    """The smaller minimum that applies while the drift trigger fires."""

    min_confidence: Share
    """Examples below this self-consistency confidence are not training data."""

    max_cluster_share: float = Field(gt=0.0, le=1.0)
    """Largest share of a data set one prompt cluster may hold (against tail narrowing)."""

    cluster_count: int = Field(ge=2, le=64)
    """Prompt clusters used to measure that share."""

    min_answer_diversity: Share
    """Smallest answer diversity, 1 - the share of the examples' most common answer (against collapse
    into one answer: 0.2 blocks a data set where one answer holds more than 80%)."""

    min_label_gain: float | None = Field(ge=-1.0, le=1.0)
    """Smallest estimated gain of the data set's labels over the model's own greedy answers: the mean
    of (label confidence - the share of samples asserting the greedy answer) over its labeled prompts
    (evolvd.labeling.calibration). Labels no better than what the model already answers teach it
    nothing right; null: no such check."""

    min_interval_s: float = Field(ge=0.0)
    """Seconds that must pass after a run started before the next may start."""

    safety_anchor_share: float = Field(ge=0.0, lt=1.0)
    """Share of each training data set made of refusals to harmful requests (`safety_anchor.jsonl`):
    fine-tuning on ordinary traffic erodes a model's refusals, and a few percent of safety examples
    keep them (Bianchi et al., Safety-Tuned LLaMAs, ICLR 2024). 0: none."""

    @model_validator(mode="after")
    def _drift_lowers_the_bar(self) -> TrainingPolicy:
        if self.drift_min_new_examples > self.min_new_examples:
            raise ValueError(
                f"drift_min_new_examples ({self.drift_min_new_examples}) must not exceed "
                f"min_new_examples ({self.min_new_examples}): drift makes training start sooner"
            )
        if self.max_cluster_share * self.cluster_count < 1.0:
            raise ValueError(
                f"max_cluster_share {self.max_cluster_share} with {self.cluster_count} clusters can "
                "never pass: some cluster always holds at least 1/cluster_count of the data"
            )
        return self


# --- promotion -----------------------------------------------------------------------------------


class CanaryPolicy(_Policy):
    share: float = Field(gt=0.0, lt=1.0)
    """Share of gateway traffic the candidate serves during its canary."""

    window_s: float = Field(gt=0.0)
    """How long the canary runs before it is judged."""

    min_requests: int = Field(ge=1)
    """Requests the canary must have served to be judged; fewer extends the window."""


class RollbackPolicy(_Policy):
    max_error_rate_increase: Share
    """Roll back when the candidate's error rate exceeds the live one's by more than this."""

    max_latency_ratio: float = Field(ge=1.0)
    """Roll back when the candidate's p95 latency exceeds the live one's by this factor."""

    max_feedback_drop: float = Field(ge=0.0, le=2.0)
    """Roll back when the candidate's mean feedback (-1..1) is lower by more than this."""

    max_p_value: float = Field(gt=0.0, le=1.0)
    """An error-rate or latency regression must also be significant at this level (one-sided:
    Fisher's exact test on the error counts, Mann-Whitney U on the latencies), so a canary with a
    small share is not rolled back on noise. 1.0: the bounds above alone decide."""


class PromotionPolicy(_Policy):
    min_improvement: float = Field(ge=-1.0, le=1.0)
    """Held-out score gain over the live adapter a candidate needs (0 allows a tie)."""

    max_p_value: float = Field(gt=0.0, le=1.0)
    """The paired test of candidate vs live must reach this significance (1.0 switches it off)."""

    max_forgetting_drop: Share
    """Largest drop allowed on the forgetting probe set."""

    max_golden_drop: Share
    """Largest drop allowed on the operator's golden set (evaluation.golden_set), when there is one."""

    min_heldout: int = Field(ge=0)
    """Fewest held-out items the comparison must rest on."""

    heldout_min_confidence: float | None = Field(ge=0.0, le=1.0)
    """Confidence a held-out label needs to be an item of the held-out suite; null: the training
    policy's min_confidence. A suite scored against labels right half the time rewards the live
    model's own majority (bench/analysis/controls.md): a bar above the training one buys fewer,
    truer items."""

    require_safety_probes: bool
    """Block a candidate whose safety probes regress (bounds in safety.model_probes)."""

    canary: CanaryPolicy | None
    """Serve a share of traffic before going live; null promotes straight to live."""

    rollback: RollbackPolicy
    """When a canary or a freshly promoted adapter is rolled back automatically."""


# --- labeling ------------------------------------------------------------------------------------


class LabelingPolicy(_Policy):
    samples: int = Field(ge=1, le=32)
    """Chain-of-thought answers sampled per prompt (vLLM's `n`) for the self-consistency vote."""

    temperature: float = Field(ge=0.0, le=2.0)
    """Sampling temperature; this small model loses accuracy fast above about 0.8."""

    top_p: float = Field(gt=0.0, le=1.0)
    """Nucleus sampling bound used with the temperature."""

    max_tokens: int = Field(ge=16, le=4096)
    """Longest sampled answer (reasoning included)."""

    chain_of_thought: bool
    """Ask for reasoning before a marked answer when sampling (LMSI); false samples answers to the
    prompt as users sent it, read with the question-aware extraction."""

    critique: bool
    """Ask the model to critique and score its selected answer (needed for refinement and for
    preference pairs of free-form answers)."""

    refine: bool
    """Ask the model to refine its answer from the critique; kept only when it scores higher."""

    critique_max_tokens: int = Field(ge=16, le=2048)
    """Longest critique."""

    constrained_score: bool
    """When a critique has no readable score, ask for one with decoding constrained to 1..10."""

    pair_min_margin: float = Field(ge=0.0, le=9.0)
    """A critique pair is kept only when chosen and rejected scores differ by at least this."""

    vote_pairs: bool
    """Where answers can be extracted, pair a winning reasoning path against a minority path that
    reached a different answer (self-consistency preference pairs): no judge involved."""

    vote_pair_min_margin: int = Field(ge=1, le=32)
    """A vote pair is kept only when the winner has at least this many more votes than the rejected
    answer."""

    cot_examples_per_prompt: int = Field(ge=0, le=32)
    """Winning reasoning paths kept as training examples per prompt (besides the direct answer)."""

    critique_examples: bool
    """Keep the critiques that agree with the vote as training examples for judging (SELF's
    meta-skill learning): the judge's prompt, and its critique ending in its score."""

    greedy_baseline: bool
    """Also ask the model's greedy answer to each prompt whose answer can be read (one more request):
    what the label is compared with by the training gate's min_label_gain."""

    @model_validator(mode="after")
    def _refine_needs_critique(self) -> LabelingPolicy:
        if self.refine and not self.critique:
            raise ValueError("refine needs critique: the refinement is written from the critique")
        return self


POLICY_MODELS: dict[str, type[_Policy]] = {
    "safety": SafetyPolicy,
    "drift": DriftPolicy,
    "training": TrainingPolicy,
    "promotion": PromotionPolicy,
    "labeling": LabelingPolicy,
}
"""File stem -> schema. The order is the order they are loaded and shown."""
