"""Real-world short-answer facts from data that PyPI packages ship, for benchmarks of the daemon's
judgement (nobody here wrote them; gold answers are used only for scoring):

- `capitals`: "What is the capital of Kenya?" from countryinfo's country records (MIT);
- `element_symbols`: "What is the chemical symbol of iron?" from periodictable (public domain);
- `atomic_numbers`: "What is the atomic number of iron?", the same table.

Each family is drawn reproducibly (a seeded shuffle) so two runs ask the same questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from evolvd.labeling.answers import normal_words, same_answer


@dataclass(frozen=True)
class Fact:
    family: str
    prompt: str
    gold: tuple[str, ...]
    """Accepted answers (the first is the canonical one), as the answer identity spells them."""

    def is_right(self, answer: str | None) -> bool:
        """Whether an extracted answer identity asserts the gold answer (the vote's own rule)."""
        return any(same_answer(answer, g) for g in self.gold)


def _identity(text: str) -> str:
    return " ".join(normal_words(text))


def capitals() -> list[Fact]:
    import countryinfo

    facts = []
    for country in countryinfo.all_countries():
        name, capital = country.name(), country.capital()
        # No capital recorded (Antarctica), or a list of them, or a city state: nothing to ask.
        if not isinstance(name, str) or not isinstance(capital, str) or not capital:
            continue
        if name.lower() == capital.lower():
            continue
        facts.append(Fact("capitals", f"What is the capital of {name}?", (_identity(capital),)))
    return facts


def _elements() -> list[tuple[str, str, int]]:
    import periodictable

    return [(e.name, e.symbol, e.number) for e in periodictable.elements if e.number > 0]


def element_symbols() -> list[Fact]:
    return [
        Fact("element_symbols", f"What is the chemical symbol of {name}?", (_identity(symbol),))
        for name, symbol, _ in _elements()
    ]


def atomic_numbers() -> list[Fact]:
    return [
        Fact("atomic_numbers", f"What is the atomic number of {name}?", (str(number),))
        for name, _, number in _elements()
    ]


def small_addition() -> list[Fact]:
    """The control: evolvd's own generated one-digit sums (not real-world data), the family where
    the bundled model's confident majority is known to beat its greedy answer (bench/labels.py).
    Every distinct prompt the generator makes (81 sums in 4 phrasings: 324), so a held-out slice of
    them is large enough for a significance test."""
    from evolvd.workload import generate

    tasks = generate("small_addition", 4000, seed=23)
    return [Fact("small_addition", t.prompt, (t.gold,)) for t in tasks]


FAMILIES: dict[str, Callable[[], list[Fact]]] = {
    "capitals": capitals,
    "element_symbols": element_symbols,
    "atomic_numbers": atomic_numbers,
}
CONTROL_FAMILIES: dict[str, Callable[[], list[Fact]]] = {"small_addition": small_addition}
"""Generated, not real-world: shows the label checks open where labels do beat greedy answers."""


def draw(family: str, n: int, seed: int = 7) -> list[Fact]:
    """`n` facts of a family in a reproducible order (all of them when it has fewer)."""
    unique = {f.prompt: f for f in {**FAMILIES, **CONTROL_FAMILIES}[family]()}
    facts = sorted(unique.values(), key=lambda f: f.prompt)
    random.Random(f"{family}:{seed}").shuffle(facts)
    return facts[:n]
