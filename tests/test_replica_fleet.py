"""The fleet's swap check (evolvd.serving.fleet) against stand-ins for replicas that answer the probe
as told; the real fleet (two vLLM replicas behind vllm-router) is tests/test_fleet.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from stand_in_http import JsonHandler, StandInServer

from evolvd.connectors.embedded_broker import free_port
from evolvd.connectors.vllm_client import VLLMClient, VLLMError
from evolvd.serving.fleet import ReplicaFleet, ReplicasDisagreeError


class StandInReplica(StandInServer):
    """Answers /v1/completions with `text` for known adapters, 404 otherwise; counts unloads."""

    def __init__(self, text: str, known: set[str]) -> None:
        self.text, self.known = text, known
        self.unloaded: list[str] = []
        replica = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server names it
                body = self.body()
                name = str(body.get("model") or body.get("lora_name"))
                if self.path == "/v1/unload_lora_adapter":
                    replica.unloaded.append(name)
                if name not in replica.known:
                    self.answer(404, {"error": {"message": f"The model `{name}` does not exist."}})
                elif self.path == "/v1/completions":
                    self.answer(200, {"model": name, "choices": [{"text": replica.text}]})
                else:
                    self.answer(200, {})

        super().__init__(Handler)


@pytest.fixture
def replicas() -> Iterator[list[StandInReplica]]:
    made = [StandInReplica("ready", {"a1"}), StandInReplica("ready", {"a1"})]
    yield made
    for replica in made:
        replica.close()


def test_a_swap_needs_every_replica_to_give_the_same_greedy_answer(
    replicas: list[StandInReplica], tmp_path: Path
) -> None:
    fleet = ReplicaFleet([r.url for r in replicas], tmp_path, None)
    try:
        assert fleet.probe("a1", "Reply with the word ready.").text == "ready"
        replicas[1].text = "not ready at all"
        with pytest.raises(ReplicasDisagreeError) as disagree:
            fleet.probe("a1", "Reply with the word ready.")
        assert "replicas give different greedy answers with a1" in str(disagree.value)
        assert f"{replicas[0].url} 'ready'" in str(disagree.value)
        assert f"{replicas[1].url} 'not ready at all'" in str(disagree.value)

        replicas[1].known.clear()  # one replica cannot find the adapter (another folder, or none)
        with pytest.raises(
            ReplicasDisagreeError, match=f"1 of 2 replicas cannot serve a1: {replicas[1].url}"
        ):
            fleet.probe("a1", "Reply with the word ready.")

        fleet.unload_adapter("a1")  # the one that never had it answers 404: not an error
        assert [r.unloaded for r in replicas] == [["a1"], ["a1"]]
    finally:
        fleet.close()


def test_only_an_adapter_published_in_the_shared_directory_under_its_name_is_servable(tmp_path: Path) -> None:
    fleet = ReplicaFleet(["http://127.0.0.1:9"], tmp_path / "shared", None)  # asks no replica
    fleet.load_adapter("a1", str(tmp_path / "shared" / "a1"))
    with pytest.raises(VLLMError, match="not published in the fleet's adapter directory"):
        fleet.load_adapter("a1", str(tmp_path / "elsewhere" / "a1"))
    with pytest.raises(VLLMError, match="under its name"):
        fleet.load_adapter("a1", str(tmp_path / "shared" / "a2"))


def test_a_replica_that_does_not_answer_is_not_checked_but_one_must_answer(
    replicas: list[StandInReplica], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica away (down, restarting) gets no traffic from the router and serves the adapter from
    the shared folder when it is back; refusing would turn a rolling restart into a rollback."""
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fleet = ReplicaFleet([replicas[0].url, away], tmp_path, None)
    try:
        with caplog.at_level(logging.WARNING, logger="evolvd.fleet"):
            assert fleet.probe("a1", "Reply with the word ready.").text == "ready"
        assert f"1 of 2 replicas did not answer and were not checked ({away})" in caplog.text
        fleet.unload_adapter("a1")  # the one away: logged, not raised
        assert replicas[0].unloaded == ["a1"]
    finally:
        fleet.close()
    nobody = ReplicaFleet([away], tmp_path, None)
    try:
        with pytest.raises(ReplicasDisagreeError, match="no replica answered the probe of a1"):
            nobody.probe("a1", "Reply with the word ready.")
        with pytest.raises(VLLMError) as unanswered:  # the client itself: one kind of error, status 0
            VLLMClient(away).unload_adapter("a1")
        assert unanswered.value.status == 0 and "unloading a1 got no answer" in str(unanswered.value)
    finally:
        nobody.close()
