"""The daemon's part lifecycle (evolvd.parts) and ingest's own supervision (evolvd.ingest_service).

The whole daemon's start and stop run in tests/test_daemon.py (failed startups, SIGTERM, kill -9);
these pin the rules every part relies on: started in order, stopped in reverse even when a start or a
stop fails, /status sections never claimed twice, and an ingest loop that fails is built again with
backoff while its reason shows in /status.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from evolvd.config import IngestConfig
from evolvd.ingest import IngestState, WriterStall
from evolvd.ingest_service import IngestService, IngestStartError
from evolvd.metrics import IngestMetrics
from evolvd.parts import PartStack, joined_status
from evolvd.restart_backoff import RestartBackoff


@dataclass
class RecordingPart:
    name: str
    log: list[str]
    fail_start: bool = False
    fail_stop: bool = False
    sections: dict[str, object] = field(default_factory=dict)

    def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")

    def status_sections(self) -> dict[str, object]:
        return self.sections


def test_parts_stop_in_reverse_and_one_failing_stop_stops_nothing_else(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    stack = PartStack()
    stack.on_close("file", lambda: log.append("close file"))
    for part in (RecordingPart("a", log), RecordingPart("b", log, fail_stop=True), RecordingPart("c", log)):
        stack.start(part)
    stack.close()
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a", "close file"]
    assert "b did not stop cleanly" in caplog.text


def test_a_part_that_fails_to_start_is_stopped_too_and_later_parts_never_start() -> None:
    log: list[str] = []
    stack = PartStack()
    parts = [RecordingPart("a", log), RecordingPart("b", log, fail_start=True), RecordingPart("c", log)]
    with pytest.raises(RuntimeError, match="b cannot start"):
        for part in parts:
            stack.start(part)
    stack.close()
    # A failed start may have left a child process behind: its stop runs; "c" was never started.
    assert log == ["start a", "start b", "stop b", "stop a"]


def test_status_is_the_join_of_the_parts_sections() -> None:
    log: list[str] = []
    kafka = RecordingPart("kafka", log, sections={"kafka": 1})
    buffer = RecordingPart("buffer", log, sections={"buffer": 2, "dead_letters": 3})
    assert joined_status([kafka, buffer]) == {"kafka": 1, "buffer": 2, "dead_letters": 3}
    with pytest.raises(ValueError, match="'buffer'"):
        joined_status([buffer, RecordingPart("other", log, sections={"buffer": 4})])


class ScriptedLoop:
    """An ingest loop that fails with `error` at once, or (without one) runs until asked to stop."""

    def __init__(self, error: Exception | None) -> None:
        self.state = IngestState()
        self._error = error
        self._stall = WriterStall()

    @property
    def writer_stall(self) -> WriterStall:
        return self._stall

    def run(self, stop: threading.Event) -> None:
        self.state.running = True
        try:
            if self._error is not None:
                raise self._error
            stop.wait(30)
        finally:
            self.state.running = False


def test_a_failing_ingest_loop_is_built_again_with_its_reason_shown() -> None:
    """The first loop dies (its fetcher process was killed), the first rebuild cannot reach Kafka,
    the second runs: two restarts, both reasons seen in turn, and the running loop is ready."""
    script: list[ScriptedLoop | Exception] = [
        ScriptedLoop(ConnectionError("Kafka fetcher process exited")),
        IngestStartError("no Kafka broker answered at 127.0.0.1:9"),
        ScriptedLoop(None),
    ]
    errors: list[str | None] = []

    def new_loop() -> ScriptedLoop:
        step = script.pop(0)
        errors.append(service.last_error)
        if isinstance(step, Exception):
            raise step
        return step

    registry = CollectorRegistry()
    stopping = threading.Event()
    service = IngestService(
        new_loop,
        IngestConfig(),
        IngestMetrics.create(registry),
        stopping,
        lambda: None,
        backoff=RestartBackoff(initial_s=0.01, max_s=0.05, healthy_after_s=60),
    )
    assert service.unready_reason() == "ingest is not running"
    service.start()
    try:
        deadline = time.monotonic() + 10
        while service.unready_reason() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.unready_reason() is None
        assert service.restarts == 2
        assert registry.get_sample_value("evolvd_ingest_restarts_total") == 2
        # What /status showed before each rebuild: nothing, then the loop's failure, then Kafka's.
        assert errors == [
            None,
            "ConnectionError: Kafka fetcher process exited",
            "no Kafka broker answered at 127.0.0.1:9",
        ]
        (section,) = service.status_sections().values()
        assert section.running and section.restarts == 2
    finally:
        service.stop()
    assert stopping.is_set() and not service.alive
