"""Safety on data: decide allow, redact or quarantine for a piece of text before it can train.

One SafetyScreen per safety policy; it is cheap to build, so a policy reload builds a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from evolvd.policies.models import PatternList, SafetyPolicy
from evolvd.policies.pii import PiiDetector, PiiFinding, redact

Outcome = Literal["allow", "redact", "quarantine"]
_SEVERITY: dict[Outcome, int] = {"allow": 0, "redact": 1, "quarantine": 2}


@dataclass(frozen=True)
class ScreenResult:
    outcome: Outcome
    texts: tuple[str, ...]
    """The screened texts, redacted where the outcome is `redact` (unchanged otherwise)."""

    reasons: tuple[str, ...] = field(default=())
    """One line per finding, e.g. `pii:email -> redact`, `injection: <pattern>`. Never the PII itself."""


class SafetyScreen:
    """Applies a SafetyPolicy's PII, disallowed-content and injection rules to texts."""

    def __init__(self, policy: SafetyPolicy) -> None:
        self._policy = policy
        self._pii = PiiDetector(policy.pii)
        self._pattern_lists: list[tuple[str, PatternList, list[re.Pattern[str]]]] = [
            (f"content:{name}", rules, _compile(rules)) for name, rules in policy.disallowed_content.items()
        ]
        self._pattern_lists.append(("injection", policy.injection, _compile(policy.injection)))

    def screen(self, *texts: str) -> ScreenResult:
        """Screen texts that belong together (a prompt and its answer): one outcome for all."""
        outcome: Outcome = "allow"
        reasons: list[str] = []
        for label, rules, patterns in self._pattern_lists:
            for pattern in patterns:
                if any(pattern.search(text) for text in texts):
                    reasons.append(f"{label} matched {pattern.pattern!r} -> {rules.action}")
                    outcome = _worse(outcome, rules.action)
                    break
        findings = [self._pii.find(text) for text in texts]
        for finding in sorted({f.kind for per_text in findings for f in per_text}):
            action = self._policy.pii.actions[finding]
            reasons.append(f"pii:{finding} -> {action}")
            outcome = _worse(outcome, action)
        if outcome != "redact":
            return ScreenResult(outcome, texts, tuple(reasons))
        return ScreenResult(
            outcome, tuple(self._redact(t, f) for t, f in zip(texts, findings, strict=True)), tuple(reasons)
        )

    def _redact(self, text: str, findings: list[PiiFinding]) -> str:
        to_redact = [f for f in findings if self._policy.pii.actions[f.kind] == "redact"]
        return redact(text, to_redact, self._policy.pii.redaction)


def _compile(rules: PatternList) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in rules.patterns]


def _worse(current: Outcome, candidate: Outcome) -> Outcome:
    return candidate if _SEVERITY[candidate] > _SEVERITY[current] else current
