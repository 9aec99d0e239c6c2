"""A labeler as a part of the daemon (`evolvd run --role label`): a thread that claims pending events
from the shared buffer, labels them with the model at serving.url, and writes each result; it waits a
little when nothing is claimable. Several such processes share one buffer (evolvd.labeling.labeler
.claim_events); a failed round is logged and counted, and the next one starts afresh."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx

from evolvd.connectors.vllm_client import VLLMClient, VLLMError
from evolvd.labeling.labeler import Labeler
from evolvd.status_models import LabelerStatus

logger = logging.getLogger("evolvd.labeler")

JOIN_TIMEOUT_S = 60.0


class ServedModel:
    """The model a labeler labels with at serving.url: the configured one (labeling.model), or the
    first the server lists, asked for until it answers (a labeler may start before its server)."""

    def __init__(self, client: VLLMClient, configured: str | None) -> None:
        self._client = client
        self.name = configured

    def live(self) -> tuple[VLLMClient, str] | None:
        if self.name is None:
            try:
                listed = self._client.models()
            except (VLLMError, httpx.HTTPError) as exc:
                logger.warning("no model to label with yet: %s", exc)
                return None
            self.name = listed[0] if listed else None
        return (self._client, self.name) if self.name is not None else None


class LabelWorker:
    name = "labeling"

    def __init__(
        self,
        labeler: Labeler,
        claimant: str,
        model: Callable[[], str | None],
        idle_wait_s: float,
        stopping: threading.Event,
    ) -> None:
        """`model`: the model being labeled with, once known; `stopping`: the daemon's stop event (a
        round in flight finishes the prompt in hand and leaves the rest claimable)."""
        self._labeler = labeler
        self._claimant = claimant
        self._model = model
        self._idle_wait_s = idle_wait_s
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="evolvd-labeler", daemon=True)
        self.labeled = 0
        self.rounds_failed = 0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=JOIN_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                labeled = self._labeler.run_once()
            except Exception as exc:  # the buffer or the model went away: try again after a pause
                self.rounds_failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("labeling round failed: %s", self.last_error)
                labeled = 0
            self.labeled += labeled
            if labeled == 0:
                self._stopping.wait(self._idle_wait_s)

    def status_sections(self) -> dict[str, LabelerStatus]:
        return {
            self.name: LabelerStatus(
                claimant=self._claimant,
                model=self._model(),
                running=self._thread.is_alive(),
                labeled=self.labeled,
                rounds_failed=self.rounds_failed,
                last_error=self.last_error,
            )
        }
