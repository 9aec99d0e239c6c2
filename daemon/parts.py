"""The daemon's parts and their lifecycle.

A part is built whole before anything starts (no part is half-made, none is optional inside another);
`PartStack` then starts the parts in order and stops the started ones in reverse, each stop on its own:
one part failing to stop never keeps the others running. /status is the join of the parts' sections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from typing import Protocol, TypeVar

logger = logging.getLogger("evolvd.daemon")


class Part(Protocol):
    """One supervised piece of the daemon (the buffer, ingest, serving, the loop, the admin API...)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class StatusPart(Part, Protocol):
    def status_sections(self) -> Mapping[str, object]:
        """This part's sections of /status, by the name /status shows them under."""


P = TypeVar("P", bound=Part)


class PartStack:
    """Starts parts in order; `close()` stops what was started (and releases what was opened) in reverse."""

    def __init__(self) -> None:
        self._stack = ExitStack()

    def start(self, part: P) -> P:
        """Start a part; its stop is due even when the start fails half-way (a child process may
        already run), so every part's stop is safe whatever its start did."""
        self._stack.callback(self._stop, part.name, part.stop)
        part.start()
        return part

    def on_close(self, name: str, release: Callable[[], None]) -> None:
        """Release a resource opened while building (the buffer file, clients) when the stack closes."""
        self._stack.callback(self._stop, name, release)

    def close(self) -> None:
        self._stack.close()

    @staticmethod
    def _stop(name: str, stop: Callable[[], None]) -> None:
        try:
            stop()
        except Exception:
            logger.exception("%s did not stop cleanly; stopping the other parts", name)


def joined_status(parts: list[StatusPart]) -> dict[str, object]:
    """/status's part sections: every part's, and no section claimed twice."""
    joined: dict[str, object] = {}
    for part in parts:
        for section, value in part.status_sections().items():
            if section in joined:
                raise ValueError(f"two parts report the /status section {section!r}")
            joined[section] = value
    return joined
