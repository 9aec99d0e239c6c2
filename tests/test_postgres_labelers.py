"""Labelers as separate processes (`evolvd run --role label`) on one shared PostgreSQL buffer.

The model behind serving.url is a small OpenAI-compatible stub on 127.0.0.1 that answers "What is N + 5?"
at once: what is under test is how the labelers share the buffer (claims, leases, one write per event)
through real processes and a real PostgreSQL server; labeling with the real vLLM server is tested in
tests/test_serving.py and tests/test_loop.py."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import run_cli

from evolvd.abc import IngestBatch, Record
from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.contract import decode_into, encode_message

LABELING_POLICY = """
samples: 3
greedy_baseline: false
critique: false
refine: false
"""
STUB_MODEL = "stub-model"


class ArithmeticStub(BaseHTTPRequestHandler):
    """/v1/models and /v1/chat/completions: n answers to "What is N + 5?", all "The answer is N+5."."""

    def do_GET(self) -> None:
        self._reply({"object": "list", "data": [{"id": STUB_MODEL, "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = body["messages"][-1]["content"]
        found = re.search(r"What is (\d+) \+ 5\?", question)
        answer = f"The answer is {int(found[1]) + 5}." if found else "I do not know."
        choices = [
            {"index": i, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
            for i in range(int(body.get("n", 1)))
        ]
        self._reply({"id": "stub", "object": "chat.completion", "model": body["model"], "choices": choices})

    def _reply(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ArithmeticStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pending_and_labels(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as con:
        pending = con.execute(b"SELECT count(*) FROM events WHERE state = 'pending'").fetchone()
        labels = con.execute(b"SELECT count(*) FROM labels").fetchone()
    assert pending is not None and labels is not None
    return int(pending[0]), int(labels[0])


def test_four_labelers_label_every_event_once_through_a_kill_9(
    postgres_url: str, stub_url: str, tmp_path: Path
) -> None:
    n = 2_000
    buffer = PostgresBuffer(postgres_url)  # creates the schema, as the first member would
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "labeling.yaml").write_text(LABELING_POLICY)
    env = {
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": postgres_url,
        "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": stub_url,
        "EVOLVD_POLICIES__DIR": str(policies),
        "EVOLVD_LABELING__BATCH_SIZE": "25",
        "EVOLVD_LABELING__CONCURRENCY": "4",
        "EVOLVD_LABELING__LEASE_S": "3",
        "EVOLVD_LABELING__IDLE_WAIT_S": "0.2",
    }
    labelers = [
        DaemonProcess(tmp_path / f"l{k}", env, args=("--role", "label")).start(wait_ready=False)
        for k in range(4)
    ]
    for labeler in labelers:
        labeler.wait_ready()
    victim = labelers.pop(0)
    claimant = victim.status()["labeling"]["claimant"]
    try:  # the events arrive once all four wait for work, as ingest members would store them
        batch = IngestBatch()
        for i in range(n):
            decode_into(Record("t", 0, i, encode_message(f"ev-{i:04d}", f"What is {i} + 5?")), 4096, batch)
        batch.next_offsets[("t", 0)] = n
        buffer.write_ingest_batch(batch.seal())
    finally:
        buffer.close()

    deadline = time.monotonic() + 120
    while pending_and_labels(postgres_url)[1] < n // 10:
        assert time.monotonic() < deadline, "the labelers did not get going"
        time.sleep(0.02)
    victim.kill()  # kill -9, mid-batch: its claims stay until their lease runs out
    assert pending_and_labels(postgres_url)[0] > 0, "everything was labeled before the kill: it proves little"

    while pending_and_labels(postgres_url)[0] > 0:
        assert time.monotonic() < deadline, "the survivors did not finish the dead labeler's events"
        time.sleep(0.1)
    with psycopg.connect(postgres_url) as con:
        rows = con.execute(b"SELECT claimed_by, count(*) FROM events GROUP BY claimed_by").fetchall()
    by = {str(name): int(count) for name, count in rows}
    # What each survivor says it labeled (its count follows its batch's last write) and what the
    # victim labeled before the kill (its name is still on those events) add up to every event.
    while sum(labeler.status()["labeling"]["labeled"] for labeler in labelers) + by.get(claimant, 0) < n:
        assert time.monotonic() < deadline, "the survivors' counts never added up"
        time.sleep(0.1)
    statuses = [labeler.status()["labeling"] for labeler in labelers]
    shown = run_cli("status", env=labelers[0].client_env())
    for labeler in labelers:
        assert labeler.stop() == 0, labeler.tail()

    with psycopg.connect(postgres_url) as con:
        labels = con.execute(b"SELECT count(*), count(DISTINCT event_id) FROM labels").fetchone()
        samples = con.execute(b"SELECT count(*) FROM samples").fetchone()
        wrong = con.execute(b"SELECT count(*) FROM labels WHERE answer IS NULL").fetchone()
    assert labels == (n, n) and samples == (3 * n,)  # every event labeled, none twice
    assert wrong == (0,)
    assert len(by) >= 3 and sum(by.values()) == n, by  # the work was shared
    assert all(s["model"] == STUB_MODEL and s["labeled"] > 0 and s["rounds_failed"] == 0 for s in statuses), (
        statuses
    )
    assert sum(s["labeled"] for s in statuses) + by.get(claimant, 0) == n
    assert shown.returncode == 0 and "labeler" in shown.stdout and "kafka" not in shown.stdout, shown.stdout
