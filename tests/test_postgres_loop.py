"""The whole loop on the shared PostgreSQL buffer (issue 22): one daemon (`role: all`,
`buffer.backend: postgres`) attached to the session's broker and vLLM server ingests, labels, trains,
evaluates and promotes, and every row of it (events to the promotion decision and the lineage back to
the Kafka offsets) lives in the database, none in a DuckDB file. The loop's other steps (a retried
trainer, a rolled-back canary, a kill during promotion) run on DuckDB in tests/test_loop.py; the
tables' owners run on both backends in the unit tests (conftest.either_buffer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_process import DaemonProcess
from helpers import wait_for
from loop_harness import start_loop_daemon

from evolvd.buffer.postgres_buffer import PostgresBuffer

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]


def test_ingest_label_train_evaluate_and_promote_on_postgres(
    broker: Any, vllm_daemon: DaemonProcess, postgres_url: str, tmp_path: Path
) -> None:
    shared = {"EVOLVD_BUFFER__BACKEND": "postgres", "EVOLVD_BUFFER__POSTGRES_URL": postgres_url}
    harness = start_loop_daemon(
        broker, vllm_daemon, tmp_path / "pgloop", lambda _: PostgresBuffer(postgres_url), shared
    )
    daemon = harness.daemon
    try:
        base = daemon.status()["serving"]["base_model"]["name"]
        assert daemon.status()["buffer"]["path"].startswith("postgresql://")
        sent = harness.produce_prompts(train=8, heldout=4)
        live = wait_for(
            lambda: harness.live() != base and harness.live(), "an adapter to go live", 600, 1.0, daemon
        )
        assert harness.ask()[0] == live  # the gateway serves it under the public name

        loop = daemon.status()["loop"]
        run = next(r for r in harness.runs() if r["adapter_name"] == live)
        assert run["status"] == "succeeded"
        assert next(e for e in loop["evaluations"] if e["adapter_name"] == live)["baseline_name"] == base
        decision = next(d for d in loop["promotion_decisions"] if d["adapter"] == live)
        assert decision["outcome"] == "promote"
        offsets = harness.admin("GET", f"/adapters/{live}")["adapter"]["kafka_offsets"]
        assert offsets and {o["topic"] for o in offsets} == {harness.topic}
    finally:
        assert daemon.stop(timeout_s=120) == 0, daemon.tail()

    with psycopg.connect(postgres_url) as con:
        events = {r[0] for r in con.execute(b"SELECT id FROM events").fetchall()}
        statuses: dict[str, str] = dict(con.execute(b"SELECT name, status FROM adapters").fetchall())
        decided = con.execute(
            b"SELECT count(*) FROM policy_decisions WHERE policy = 'promotion' AND outcome = 'promote'"
        ).fetchone()
    assert set(sent) <= events
    assert statuses[live] == "live" and decided is not None and decided[0] >= 1
    assert not list(daemon.data_dir.glob("*.duckdb")), "the buffer is the database, not a file"
