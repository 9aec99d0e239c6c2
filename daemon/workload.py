"""Verifiable prompts evolvd generates itself: the built-in demo workload and the benchmarks' tasks.

Each task has a gold answer. The gold answer is for scoring only: the daemon never sees it (the
demo producer sends the prompt alone), so the loop learns without labels as it would in production.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

AnswerKind = Literal["number", "option", "yes_no"]


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    gold: str
    kind: AnswerKind


def _arithmetic(rng: random.Random) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice("+-*")
    gold = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Task("arithmetic", f"What is {a} {op} {b}?", str(gold), "number")


_ADDITION_PHRASINGS = (
    "What is {a} + {b}?",
    "What is the sum of {a} and {b}?",
    "How much is {a} plus {b}?",
    "Compute {a} + {b}.",
)


def _small_addition(rng: random.Random) -> Task:
    # The family where the bundled model's confident majority vote beats its greedy answer, so
    # self-consistency has something to teach it; on two-digit arithmetic, comparisons and parity its
    # confident majority was at or below chance (bench/labels.py, bench/judgement.py: bench/README.md).
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    # Several phrasings: 81 sums alone would leave too few distinct prompts for a held-out set
    # beside the training traffic, and a model should not learn one template.
    template = rng.choice(_ADDITION_PHRASINGS)
    return Task("small_addition", template.format(a=a, b=b), str(a + b), "number")


def _comparison(rng: random.Random) -> Task:
    a, b = rng.sample(range(10, 1000), 2)
    bigger = rng.random() < 0.5
    word = "larger" if bigger else "smaller"
    gold = "A" if (a > b) == bigger else "B"
    return Task(
        "comparison", f"Which number is {word}? A) {a} B) {b}. Answer with the letter.", gold, "option"
    )


_UNITS: list[tuple[str, str, int]] = [
    ("kilometres", "metres", 1000),
    ("metres", "centimetres", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("litres", "millilitres", 1000),
    ("days", "hours", 24),
]


def _unit_conversion(rng: random.Random) -> Task:
    big, small, factor = rng.choice(_UNITS)
    amount = rng.randint(2, 40)
    return Task("unit_conversion", f"How many {small} are in {amount} {big}?", str(amount * factor), "number")


def _parity(rng: random.Random) -> Task:
    n = rng.randint(10, 9999)
    parity = rng.choice(["even", "odd"])
    gold = "yes" if (n % 2 == 0) == (parity == "even") else "no"
    return Task("parity", f"Is {n} an {parity} number? Answer yes or no.", gold, "yes_no")


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "arithmetic": _arithmetic,
    "small_addition": _small_addition,
    "comparison": _comparison,
    "unit_conversion": _unit_conversion,
    "parity": _parity,
}


def generate(family: str, n: int, seed: int = 0) -> list[Task]:
    """n tasks of one family, reproducible from the seed."""
    if family not in FAMILIES:
        raise KeyError(f"unknown task family {family!r} (known: {', '.join(FAMILIES)})")
    rng = random.Random(f"{family}:{seed}")  # noqa: S311 - reproducible tasks, not secrets
    return [FAMILIES[family](rng) for _ in range(n)]


def mixed(n: int, families: list[str] | None = None, seed: int = 0) -> Iterator[Task]:
    """n tasks drawn round-robin from the families (all of them by default)."""
    chosen = families or list(FAMILIES)
    rng = random.Random(f"mixed:{seed}")  # noqa: S311 - reproducible tasks, not secrets
    for i in range(n):
        yield FAMILIES[chosen[i % len(chosen)]](rng)
