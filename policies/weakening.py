"""Which policy edits weaken a gate, so that each one is named in the audit row, the log and /status.

An edit can be valid and still switch a gate off (`min_improvement: -1`, `canary: null`, PII
`allow`). Nothing here refuses such an edit - operators may mean it - but none may pass unnoticed.
"""

from __future__ import annotations

from typing import Any, Literal

LOOSER_WHEN: dict[str, Literal["higher", "lower"]] = {
    # A gate is looser when this value moves in this direction.
    "safety.max_unsafe_share": "higher",
    "drift.embedding.guard_mmd": "higher",
    "drift.output.max_divergence": "higher",
    "training.min_new_examples": "lower",
    "training.drift_min_new_examples": "lower",
    "training.min_confidence": "lower",
    "training.max_cluster_share": "higher",
    "training.min_answer_diversity": "lower",
    "training.min_label_gain": "lower",
    "training.min_interval_s": "lower",
    "training.safety_anchor_share": "lower",
    "promotion.min_improvement": "lower",
    "promotion.max_p_value": "higher",
    "promotion.max_forgetting_drop": "higher",
    "promotion.max_golden_drop": "higher",
    "promotion.min_heldout": "lower",
    "promotion.heldout_min_confidence": "lower",
    "promotion.canary.window_s": "lower",
    "promotion.canary.min_requests": "lower",
    "promotion.rollback.max_error_rate_increase": "higher",
    "promotion.rollback.max_latency_ratio": "higher",
    "promotion.rollback.max_feedback_drop": "higher",
    "promotion.rollback.max_p_value": "lower",  # a stricter significance bar rolls back less often
}
SWITCHES = frozenset({"drift.guard.enabled", "promotion.require_safety_probes", "labeling.greedy_baseline"})
"""Guards that are off when False."""
OPTIONAL_GATES = frozenset({"promotion.canary"})
"""Gates that are off when null."""
OPTIONAL_BARS = frozenset({"training.min_label_gain"})
"""Single thresholds that are off when null."""
PATTERN_LISTS = ("safety.injection.patterns", "safety.disallowed_content.")
ACTION_STRENGTH = {"allow": 0, "redact": 1, "quarantine": 2}


def weakenings(policy: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Every way `after` (a policy's model_dump) lets more through than `before`, one line each."""
    old, new = _flatten(policy, before), _flatten(policy, after)
    found = [
        f"{gate}: set -> None (gate switched off)"
        for gate in sorted(OPTIONAL_GATES)
        if gate in new and new[gate] is None and any(p.startswith(f"{gate}.") for p in old)
    ]
    for path in sorted(set(old) | set(new)):
        was, now = old.get(path), new.get(path)
        if was != now and (why := _why_looser(path, was, now)) is not None:
            found.append(f"{path}: {was!r} -> {now!r} ({why})")
    return found


def _why_looser(path: str, was: Any, now: Any) -> str | None:
    if path in SWITCHES:
        return "guard switched off" if was is True and now is False else None
    if path.endswith(".action") or ".actions." in path:
        before, after = ACTION_STRENGTH.get(str(was), -1), ACTION_STRENGTH.get(str(now), -1)
        return "lets more through" if 0 <= after < before or (was is not None and now is None) else None
    if path.startswith(PATTERN_LISTS) and path.endswith(".patterns"):
        dropped = set(was or []) - set(now or [])
        return f"{len(dropped)} pattern(s) dropped" if dropped else None
    return _by_direction(path, was, now)


def _by_direction(path: str, was: Any, now: Any) -> str | None:
    direction = LOOSER_WHEN.get(path)
    if path in OPTIONAL_BARS and isinstance(was, int | float) and now is None:
        return "check switched off"
    if direction is None or not isinstance(was, int | float) or not isinstance(now, int | float):
        return None
    looser = now > was if direction == "higher" else now < was
    return "looser" if looser else None


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Dotted paths to leaves; lists stay whole (a pattern list is one value)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: value}
