"""The policies as a part of the daemon: the files in force (loaded when the part is built, so a
policy set that does not validate stops the start), the watch on the operator's directory, and the
/status section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from evolvd.status_models import PolicyStatus

if TYPE_CHECKING:  # the engine imports the scientific stack: a labeler (`--role label`) never loads it
    from evolvd.policies.engine import PolicyEngine
    from evolvd.policies.store import PolicyStore


class PolicyService:
    name = "policies"

    def __init__(self, store: PolicyStore, engine: PolicyEngine | None, watch: bool) -> None:
        """`engine`: None where the daemon only reads the files in force (a labeler, `--role label`)."""
        self.store = store
        self.engine = engine
        self._watch = watch

    def start(self) -> None:
        if self._watch:
            self.store.start_watching()

    def stop(self) -> None:
        self.store.stop()

    def status_sections(self) -> dict[str, PolicyStatus]:
        return {self.name: self.engine.status()} if self.engine is not None else {}
