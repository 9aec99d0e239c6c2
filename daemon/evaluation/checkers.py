"""Reference sets (the forgetting probes, an operator's golden set) and how an answer is checked
against a reference: one small function per checker kind, named in each JSONL line."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evolvd.config_file import ConfigError, FieldError
from evolvd.labeling.answers import AnswerKind, extract, same_answer


def _normalise(text: str) -> str:
    """Lower case, punctuation to spaces; a decimal point inside a number stays (`2.5`)."""
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text.lower())
    return " ".join(re.sub(r"[^\w\s.+-]", " ", text).split())


def _alternatives(reference: str) -> list[str]:
    """`a|b` accepts either spelling (`7|seven`)."""
    return [_normalise(r) for r in reference.split("|") if r.strip()]


def _contains(answer: str, reference: str) -> bool:
    words = f" {_normalise(answer)} "
    return any(f" {alt} " in words for alt in _alternatives(reference))


def _exact(answer: str, reference: str) -> bool:
    return _normalise(answer) in _alternatives(reference)


def _extracted(kind: AnswerKind) -> Callable[[str, str], bool]:
    def check(answer: str, reference: str) -> bool:
        got = extract(answer, kind)
        return any(same_answer(got, extract(f"The answer is {r}.", kind)) for r in reference.split("|"))

    return check


CHECKERS: dict[str, Callable[[str, str], bool]] = {
    "contains": _contains,
    "exact": _exact,
    "number": _extracted("number"),
    "choice": _extracted("option"),
    "yes_no": _extracted("yes_no"),
}


@dataclass(frozen=True)
class ReferenceItem:
    prompt: str
    reference: str
    checker: str

    def check(self, answer: str) -> bool:
        return CHECKERS[self.checker](answer, self.reference)


def load_reference_set(path: Path) -> list[ReferenceItem]:
    """JSONL lines of {"prompt", "reference", "checker"}; every bad line is reported with its number."""
    items: list[ReferenceItem] = []
    errors: list[FieldError] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError([FieldError(str(path), None, "", f"cannot read: {exc.strerror}")]) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            item = ReferenceItem(
                str(row["prompt"]), str(row["reference"]), str(row.get("checker", "contains"))
            )
        except (ValueError, KeyError, TypeError) as exc:
            errors.append(FieldError(str(path), number, "", f"bad reference line: {exc}"))
            continue
        if item.checker not in CHECKERS:
            errors.append(
                FieldError(
                    str(path),
                    number,
                    "checker",
                    f"unknown checker {item.checker!r}; one of {sorted(CHECKERS)}",
                )
            )
            continue
        items.append(item)
    if errors:
        raise ConfigError(errors)
    if not items:
        raise ConfigError([FieldError(str(path), None, "", "the reference set is empty")])
    return items
