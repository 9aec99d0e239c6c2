"""Shared fixtures: one embedded Kafka-protocol broker and one vLLM server per test session, a fresh
topic per test."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# Public data the tests read, kept in the project (bench/data/README.md names its source and licence).
SEED_TASKS = REPO / "bench" / "data" / "seed_tasks.jsonl"
MODEL_CACHE = REPO / "var" / "test-cache" / "models"  # the bundled model, converted once per machine


VLLM_FIXTURES = {"vllm_daemon", "small_benches"}


def pytest_itemcollected(item: pytest.Item) -> None:
    """`make test PYTEST_WORKERS=2` runs two pytest-xdist workers with `--dist loadgroup`. The
    tests on the session's vLLM server, and those marked `vllm` (they start vLLMs of their own),
    form one group that one worker runs in file order: still one vLLM server per session, and no
    two vLLM-heavy tests at once on a 2-core machine. vLLM computes on one core, so the other
    worker's tests run on the core it leaves idle. (Marked as each test is collected: pytest-xdist
    reads the groups in its own pytest_collection_modifyitems.)"""
    uses_vllm = VLLM_FIXTURES & set(getattr(item, "fixturenames", ()))
    if uses_vllm or item.get_closest_marker("vllm") is not None:
        item.add_marker(pytest.mark.xdist_group("vllm"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker whose pytest-xdist did not apply the groups (it appends `@group` to each grouped
    test's id; pytest 9.2 silently ignores that, pytest-dev/pytest-xdist#1386) would start a second
    vLLM server beside the first: stop the run instead."""
    if getattr(session.config.option, "loadgroup", False):
        grouped = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group")]
        ungrouped = [nodeid for nodeid in grouped if "@" not in nodeid]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist ignored the xdist_group of {ungrouped[0]} (and others)")


BROKER_PORTS: set[int] = set()
"""The session broker's port, once it runs (see kafka_python_may_drop_a_broker_socket)."""


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from evolvd.connectors.embedded_broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        BROKER_PORTS.add(b.port)
        yield b


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """The session's one private PostgreSQL server (127.0.0.1 only; tests/postgres_server.py)."""
    from postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: Any) -> str:
    """A fresh database on the session's server for one test."""
    return str(postgres.new_database())


@pytest.fixture(params=["duckdb", "postgres"])
def either_buffer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """An empty buffer on each backend: a DuckDB file, and a database on the session's PostgreSQL
    server (the tables' owners write the same SQL to both)."""
    from evolvd.buffer import DuckDBBuffer
    from evolvd.buffer.postgres_buffer import PostgresBuffer

    buf = (
        DuckDBBuffer(tmp_path / "buffer.duckdb")
        if request.param == "duckdb"
        else PostgresBuffer(request.getfixturevalue("postgres_url"))
    )
    yield buf
    buf.close()


@pytest.fixture(autouse=True)
def kafka_python_may_drop_a_broker_socket() -> None:
    """kafka-python 3.0.12 can lose a connection's socket without closing it when a client closes
    while its network thread is still connecting (kafka/net/manager.py builds the transport in a
    task that close() abandons). The garbage collector finds that socket later, in whatever test
    runs then, and the suite's `error` filter turns its ResourceWarning into that test's failure
    (seen once in CI: test_labeler failed on a socket to the broker). Only unclosed sockets whose
    peer is the session broker are excused; any other leak still fails the test it surfaces in."""
    for port in BROKER_PORTS:
        warnings.filterwarnings(
            "ignore",
            message=rf"unclosed <socket\.socket .*raddr=\('127\.0\.0\.1', {port}\)>",
            category=ResourceWarning,
        )


@pytest.fixture(scope="session")
def base_model() -> Path:
    from evolvd.connectors.model_bootstrap import ensure_bundled_model

    return ensure_bundled_model(MODEL_CACHE).path


@pytest.fixture(scope="session")
def vllm_daemon(broker: Any, base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A daemon supervising the session's one real vLLM server (5 GB, about a minute to start).

    tests/test_serving.py drives this daemon itself; other modules attach daemons of their own to its
    server in external mode (`serving.mode: external`, `serving.url`), as an operator with a shared
    vLLM deployment would."""
    from daemon_process import DaemonProcess
    from helpers import GATEWAY_API_KEY

    env = {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": f"serving-{uuid.uuid4().hex[:8]}",
        "EVOLVD_KAFKA__GROUP_ID": f"g-{uuid.uuid4().hex}",
        "EVOLVD_SERVING__MODEL_PATH": str(base_model),
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_GATEWAY__PORT": "0",
        "EVOLVD_GATEWAY__CAPTURE": "true",
        "EVOLVD_GATEWAY__API_KEYS_ENV": "EVOLVD_TEST_GATEWAY_KEYS",
        "EVOLVD_TEST_GATEWAY_KEYS": f"other-key,{GATEWAY_API_KEY}",
        "EVOLVD_LABELING__ENABLED": "false",  # its captured traffic must not load vLLM during swaps
        # The tests' adapters are made under the session's temporary folder.
        "EVOLVD_SERVING__ADAPTER_IMPORT_ROOT": str(tmp_path_factory.getbasetemp()),
    }
    process = DaemonProcess(tmp_path_factory.mktemp("serving") / "data", env).start(timeout_s=420)
    yield process
    assert process.stop(timeout_s=120) == 0, process.tail()


@pytest.fixture(scope="session")
def small_benches(broker: Any, vllm_daemon: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The --small runs of the bench harnesses that only ask the session's vLLM server (no kills, no
    timings of their own), all at once (tests/helpers.run_small_benches_at_once): self-improvement,
    free-form self-improvement and the judgement benchmark."""
    from helpers import run_small_benches_at_once

    serving = vllm_daemon.status()["serving"]
    attach = ["--attach-vllm", serving["url"], serving["base_model"]["path"]]
    daemon_harness = ["--bootstrap-servers", broker.bootstrap_servers, *attach]
    commands = {
        "selfimprove": daemon_harness,
        "freeform": ["--source", str(SEED_TASKS), *daemon_harness],
        "judgement": ["--attach-vllm", serving["url"]],
    }
    return run_small_benches_at_once(commands, tmp_path_factory.mktemp("small-benches"), vllm_daemon)


@pytest.fixture
def topic(broker: Any) -> str:
    """A fresh 2-partition topic (the broker quirks make shared topics and groups flaky)."""
    from evolvd.config import KafkaConfig
    from evolvd.connectors.kafka_source import ensure_topic

    name = f"t-{uuid.uuid4().hex[:12]}"
    ensure_topic(
        KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=name), broker.bootstrap_servers, 2
    )
    return name


@pytest.fixture(autouse=True)
def no_daemon_outlives_its_test() -> Iterator[None]:
    """Stop the daemons a test started itself if it left them running (e.g. it failed half-way).

    Daemons of module- and session-scoped fixtures were started before this runs, so they are left alone.
    """
    from daemon_process import STARTED

    already = len(STARTED)
    yield
    for daemon in STARTED[already:]:
        daemon.kill_if_running()
    del STARTED[already:]
