"""The daemon's log setup: what an operator sees on stderr."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import socket
from collections.abc import Iterator

import pytest
from kafka.net.transport import KafkaTCPTransport

from evolvd.logs import configure_logging


@pytest.fixture
def daemon_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put pytest's own setup back afterwards."""
    touched = [
        "kafka",
        "kafka.net.transport",
        "uvicorn.access",
        "httpx",
        "apscheduler.executors",
        "apscheduler.scheduler",
    ]
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).filters[:]) for name in touched}
    yield
    root.handlers[:], root.level = saved_root[0], saved_root[1]
    for name, (level, filters) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).filters[:] = filters


class _NoNet:
    """The two calls a transport makes on its network loop when it closes."""

    def unregister_event(self, sock: socket.socket, events: int) -> None:
        pass

    def cancel(self, task: object) -> None:
        pass


def read_after_close() -> tuple[bytes, object]:
    """The library's own transport through the race: KafkaConsumer.close() from the daemon's thread,
    while the network thread was woken for a read. What the transport reports to itself."""
    ours, theirs = socket.socketpair()
    try:
        transport = KafkaTCPTransport(_NoNet(), ours)
        transport.close()
        data, error = transport._sock_recv()
        return data, error
    finally:
        theirs.close()


def test_kafka_read_racing_its_own_close_is_not_an_error_but_other_transport_errors_are(
    daemon_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    data, error = read_after_close()
    assert data == b"" and error is not None  # the library still reports the failed read to itself
    logging.getLogger("kafka.net.transport").error("%s: socket disconnected", "<transport>")
    stderr = capsys.readouterr().err
    assert "Error receiving network data" not in stderr
    assert "AttributeError" not in stderr
    assert " ERROR " in stderr and "socket disconnected" in stderr  # a real transport error still shows


def test_the_demoted_race_still_shows_when_kafka_logging_is_turned_up_to_debug(
    daemon_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG")
    logging.getLogger("kafka").setLevel(logging.DEBUG)  # configure_logging keeps kafka at ERROR
    read_after_close()
    stderr = capsys.readouterr().err
    assert " DEBUG   kafka.net.transport: " in stderr and "Error receiving network data" in stderr
    assert " ERROR " not in stderr


def test_json_logs_carry_extra_fields_milliseconds_and_tracebacks(
    daemon_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("evolvd.test")
    log.info("promoted %s", "m-v3", extra={"adapter": "m-v3", "p_value": 0.01})
    try:
        raise ValueError("bad adapter")
    except ValueError:
        log.exception("swap failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (
        first["message"] == "promoted m-v3" and first["level"] == "INFO" and first["logger"] == "evolvd.test"
    )
    assert (first["adapter"], first["p_value"]) == ("m-v3", 0.01), "extra fields are fields"
    stamp = dt.datetime.fromisoformat(first["ts"])
    assert stamp.tzinfo is not None and re.search(r"T\d\d:\d\d:\d\d\.\d{3}\+00:00$", first["ts"])
    assert "ValueError: bad adapter" in second["exc_info"]
