"""Scale-out: what the shared PostgreSQL buffer buys, against the embedded DuckDB buffer, in one run.

1. Labeled-event writes per second: the same labeler results (every row of one labeled event and its
   state, one transaction each, through evolvd.labeling.labeler.write_result) written to a DuckDB
   file by its one writer, and to PostgreSQL by one and by several writer threads.
2. Ingest members: M messages through `evolvd run --role ingest` processes on one PostgreSQL buffer,
   one member and then two in one consumer group, against a raw kafka-python consumer of the same
   topic; every run is checked for exactly-once (M distinct events, M rows).

3. Labelers: the same generated arithmetic prompts labeled by one and by two `evolvd run --role label`
   processes sharing one PostgreSQL buffer and one vLLM server (the bundled model), each event once.

This machine has 2 cores: two members cannot run twice as fast here (and two labelers share one CPU
vLLM, which batches both), so the report gives the CPU each side used.

    python bench/scale.py [--small] [--attach-vllm URL]   # URL: a running vLLM, key in $EVOLVD_VLLM_API_KEY
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_process import DaemonProcess
from ingest import CpuMeter, make_message, process_cpu_s, raw_rate
from ingest import produce as produce_messages
from judgement import served_model
from postgres_server import PostgresServer
from postgres_server import stored_events as stored

from evolvd.abc import IngestBatch, Record
from evolvd.buffer import DuckDBBuffer
from evolvd.buffer.postgres_buffer import PostgresBuffer
from evolvd.config import KafkaConfig
from evolvd.connectors.embedded_broker import EmbeddedBroker
from evolvd.connectors.kafka_source import ensure_topic
from evolvd.contract import decode_into
from evolvd.ingest import MAX_GROUP_COMMIT
from evolvd.labeling.answers import Vote
from evolvd.labeling.labeler import write_result
from evolvd.labeling.pipeline import LabelResult, Sample
from evolvd.workload import generate

RESULTS = Path(__file__).parent / "results" / "scale.json"
PARTITIONS = 4
WRITERS = 4
BATCH_MESSAGES = 1_000
TARGET_LABELED_PER_S = 1_000
TARGET_VS_DUCKDB = 10.0


# -- 1. labeled-event writes ----------------------------------------------------------------------


def ingest_events(buffer: DuckDBBuffer | PostgresBuffer, n: int) -> None:
    """`n` pending events, as ingest stores them."""
    for start in range(0, n, 1_000):
        batch = IngestBatch()
        for i in range(start, min(n, start + 1_000)):
            decode_into(Record("bench", 0, i, make_message(i)), 65536, batch)
        batch.next_offsets[("bench", 0)] = min(n, start + 1_000)
        buffer.write_ingest_batch(batch.seal())


def label_results(n: int) -> list[LabelResult]:
    """One labeler result per event, shaped like a self-consistency label of a short answer: three
    sampled answers, their vote, a chain-of-thought and a direct training example."""
    results = []
    for i in range(n):
        answer = str(i % 97 + i % 89)
        texts = [f"{i % 97} plus {i % 89} is {answer}. The answer is {answer}."] * 2 + ["The answer is 0."]
        samples = [Sample(text, answer if "is 0." not in text else "0") for text in texts]
        vote = Vote(answer, 2 / 3, (0, 1), {answer: 2, "0": 1}, 0, keys=(answer, answer, "0"))
        results.append(
            LabelResult(
                event_id=f"bench-{i:09d}",
                prompt=f"Question {i}: what is {i % 97} plus {i % 89}?",
                model="base",
                kind="number",
                params={"temperature": 0.8, "k": 3, "principles_hash": "bench"},
                samples=samples,
                vote=vote,
                examples=[("cot", texts[0]), ("direct", f"The answer is {answer}.")],
            )
        )
    return results


def write_all(buffer: DuckDBBuffer | PostgresBuffer, results: list[LabelResult], writers: int) -> float:
    """Labeled events per second, `writers` threads each with its own connection."""
    failures: list[BaseException] = []

    def write(share: list[LabelResult]) -> None:
        try:
            con = buffer.cursor()
            for result in share:
                if not write_result(con, result):
                    raise RuntimeError(f"{result.event_id} was not pending")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(results[w::writers],)) for w in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise failures[0]
    return len(results) / elapsed


def labeled_writes(server: PostgresServer, n: int, work: Path) -> dict[str, Any]:
    results = label_results(n)
    duck = DuckDBBuffer(work / "buffer.duckdb")
    try:
        ingest_events(duck, n)
        duckdb_rate = write_all(duck, results, 1)  # one writer: the DuckDB file has one
        duck_rows = duck.table_counts()
    finally:
        duck.close()
    rates: dict[str, float] = {}
    pg_rows: dict[str, int] = {}
    for writers in (1, WRITERS):
        pg = PostgresBuffer(server.new_database())
        try:
            ingest_events(pg, n)
            rates[str(writers)] = write_all(pg, results, writers)
            pg_rows = pg.table_counts()
        finally:
            pg.close()
    postgres_rate = rates[str(WRITERS)]
    same_rows = all(duck_rows[t] == pg_rows[t] for t in ("samples", "labels", "training_examples"))
    return {
        "labeled_writes_per_s": {"duckdb": round(duckdb_rate, 1), "postgres": round(postgres_rate, 1)},
        "postgres_writes_per_s_by_writers": {k: round(v, 1) for k, v in rates.items()},
        "postgres_vs_duckdb_ratio": round(postgres_rate / duckdb_rate, 2),
        "labeled_events": n,
        "same_rows_on_both": same_rows,
    }


# -- 2. ingest members --------------------------------------------------------------------------


def members_rate(bootstrap: str, server: PostgresServer, members: int, m: int, work: Path) -> dict[str, Any]:
    """Messages per second stored by `members` ingest processes on one fresh database, from the first
    stored event to the last, and the CPU they used. The messages are in the topic before the members
    start (as the raw consumer reads them); two members join together, so the window includes the
    rebalance when the second one arrives."""
    url = server.new_database()
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    ensure_topic(KafkaConfig(bootstrap_servers=bootstrap, topic=topic), bootstrap, PARTITIONS)
    env = {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "EVOLVD_KAFKA__TOPIC": topic,
        "EVOLVD_KAFKA__GROUP_ID": f"scale-{uuid.uuid4().hex}",
        "EVOLVD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": url,
        "EVOLVD_LOGGING__LEVEL": "WARNING",
        # Transactions of this many messages: the window from the first stored batch to the last then
        # spans tens of transactions even in --small.
        "EVOLVD_INGEST__BATCH_MAX_MESSAGES": str(BATCH_MESSAGES),
        # No labeler drains this buffer: backpressure (ingest.backlog_high_watermark, 50,000 waiting
        # prompts by default) would pause the members half-way through the stream.
        "EVOLVD_INGEST__BACKLOG_HIGH_WATERMARK": str(10 * m),
        "EVOLVD_INGEST__BACKLOG_LOW_WATERMARK": str(9 * m),
    }
    produce_messages(bootstrap, topic, m)
    daemons = [
        DaemonProcess(work / f"member-{members}-{n}", env, args=("--role", "ingest")).start(wait_ready=False)
        for n in range(members)
    ]
    try:
        deadline = time.monotonic() + 120
        while stored(url)[0] == 0 and time.monotonic() < deadline:  # from launch: ingest starts at once
            time.sleep(0.005)
        started, first = time.perf_counter(), stored(url)[0]
        pids = [d.proc.pid for d in daemons if d.proc is not None]  # CPU: the members (fetchers: below)
        cpu_before = sum(process_cpu_s(p) for p in pids)
        deadline = time.monotonic() + 600
        while (count := stored(url)[0]) < m and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = sum(process_cpu_s(p) for p in pids) - cpu_before
        for daemon in daemons:
            daemon.wait_ready(60)
        fetchers = [pid for d in daemons for pid in member_pids(d)[1:]]
        fetcher_cpu = sum(process_cpu_s(p) for p in fetchers)  # their whole life: a bound, not a window
        total, distinct = stored(url)
        if count <= first:
            raise RuntimeError(f"all {m} messages arrived in the first stored batch: no window to time")
    finally:
        for d in daemons:
            d.stop(timeout_s=60)
    return {
        "members": members,
        "msgs_per_s": round((count - first) / elapsed, 1),
        "members_cores_busy": round(cpu / elapsed, 2),
        "fetchers_cpu_s_whole_run": round(fetcher_cpu, 2),
        "window_first_event": first,
        "exactly_once": total == distinct == m,
    }


def member_pids(daemon: DaemonProcess) -> list[int]:
    """The member and its Kafka fetcher process."""
    status = daemon.status()
    assert daemon.proc is not None
    fetcher = status["ingest"]["fetcher_pid"]
    return [daemon.proc.pid, *([fetcher] if fetcher else [])]


def ingest_members(server: PostgresServer, m: int, work: Path) -> dict[str, Any]:
    embedded = EmbeddedBroker(log_path=work / "broker.log")
    embedded.start()
    try:
        bootstrap = embedded.bootstrap_servers
        raw_topic = f"raw-{uuid.uuid4().hex[:8]}"
        kafka = KafkaConfig(bootstrap_servers=bootstrap, topic=raw_topic)
        ensure_topic(kafka, bootstrap, PARTITIONS)
        produce_messages(bootstrap, raw_topic, m)
        assert embedded.pid is not None
        raw = raw_rate(bootstrap, raw_topic, m, kafka, CpuMeter(embedded.pid))
        one = members_rate(bootstrap, server, 1, m, work)
        two = members_rate(bootstrap, server, 2, m, work)
    finally:
        embedded.stop()
    return {
        "raw_consumer_msgs_per_s": round(raw.msgs_per_s, 1),
        "ingest_1_member": one,
        "ingest_2_members": two,
        "ingest_2_vs_1_member_ratio": round(two["msgs_per_s"] / one["msgs_per_s"], 2),
        "ingest_1_member_vs_raw_ratio": round(one["msgs_per_s"] / raw.msgs_per_s, 2),
        "exactly_once_every_run": one["exactly_once"] and two["exactly_once"],
        "ingest_batch_max_messages": BATCH_MESSAGES,
    }


# -- 3. labelers against one vLLM ---------------------------------------------------------------------

# Short answers without critique: the labeler's rate against the server, not the judge's.
LABELING_POLICY = "samples: 4\nmax_tokens: 48\ngreedy_baseline: false\ncritique: false\nrefine: false\n"


LABEL_LEASE_S = 600.0


def labelers_rate(
    server: PostgresServer, vllm: tuple[str, str | None], workers: int, prompts: list[str], work: Path
) -> dict[str, Any]:
    """Events per second labeled by `workers` label processes on one fresh database, by the database's
    clock (each event's label row carries its transaction's start), and whether each was labeled once."""
    url = server.new_database()
    buffer = PostgresBuffer(url)
    try:
        batch = IngestBatch()
        for i, prompt in enumerate(prompts):
            decode_into(
                Record("label", 0, i, json.dumps({"id": f"l{i}", "prompt": prompt}).encode()), 65536, batch
            )
        batch.next_offsets[("label", 0)] = len(prompts)
        buffer.write_ingest_batch(batch.seal())
    finally:
        buffer.close()
    policies = work / f"policies-{workers}"
    policies.mkdir(exist_ok=True)
    (policies / "labeling.yaml").write_text(LABELING_POLICY)
    vllm_url, key = vllm
    env = {
        "EVOLVD_BUFFER__BACKEND": "postgres",
        "EVOLVD_BUFFER__POSTGRES_URL": url,
        "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": vllm_url,
        "EVOLVD_POLICIES__DIR": str(policies),
        "EVOLVD_LABELING__BATCH_SIZE": "8",
        "EVOLVD_LABELING__CONCURRENCY": "8",
        "EVOLVD_LABELING__LEASE_S": str(LABEL_LEASE_S),  # labeled_events times from the first claim
        "EVOLVD_LOGGING__LEVEL": "WARNING",
        **({"EVOLVD_VLLM_API_KEY": key} if key else {}),
    }
    labelers = [
        DaemonProcess(work / f"labeler-{workers}-{n}", env, args=("--role", "label")).start(wait_ready=False)
        for n in range(workers)
    ]
    try:
        deadline = time.monotonic() + 1_800
        while labeled_events(url)[0] < len(prompts) and time.monotonic() < deadline:
            time.sleep(0.5)
        pids = [d.proc.pid for d in labelers if d.proc is not None]
        cpu_s = sum(process_cpu_s(p) for p in pids)  # their whole life: start-up included
    finally:
        for labeler in labelers:
            labeler.stop(timeout_s=120)
    labels, distinct, window_s = labeled_events(url)
    if labels < 2 or window_s <= 0:
        raise RuntimeError(f"{labels} of {len(prompts)} events labeled: no window to time")
    return {
        "labelers": workers,
        "events_per_s": round(labels / window_s, 2),
        "labeled": labels,
        "labeled_once": labels == distinct == len(prompts),
        "labelers_cpu_s_whole_run": round(cpu_s, 1),
    }


def labeled_events(url: str) -> tuple[int, int, float]:
    """(label rows, distinct events, seconds from the first claim to the last label's transaction).

    The window starts at the first claim (its lease's end less LABEL_LEASE_S), not at the first label:
    a labeler writes a batch's labels in one burst, so from first to last label a run of one or two
    batches (the small mode's 8 events) measures milliseconds of writing, not labeling."""
    import psycopg

    with psycopg.connect(url) as con:
        row = con.execute(
            b"SELECT count(*), count(DISTINCT event_id),"
            b" coalesce(extract(epoch FROM max(created_at)"
            b"  - (SELECT min(claimed_until) FROM events) + make_interval(secs => %s)), 0) FROM labels",
            [LABEL_LEASE_S],
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), float(row[2])


def labelers(server: PostgresServer, attach: str | None, n: int, work: Path) -> dict[str, Any]:
    prompts = list(dict.fromkeys(t.prompt for t in generate("arithmetic", 4 * n, seed=22)))[:n]
    with served_model(attach) as (client, _):
        vllm = (client.base_url, client.api_key)
        one = labelers_rate(server, vllm, 1, prompts, work)
        two = labelers_rate(server, vllm, 2, prompts, work)
    return {
        "labelers_1": one,
        "labelers_2": two,
        "labelers_2_vs_1_ratio": round(two["events_per_s"] / one["events_per_s"], 2),
        "labelers_note": f"{n} arithmetic prompts, 4 samples each, against one vLLM"
        + (" (attached)" if attach else " (the bundled model, managed by a daemon)"),
    }


def main() -> int:
    # SIGTERM unwinds like Ctrl-C: the private PostgreSQL server, the broker and the members stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a minute: checks the harness, proves little")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--attach-vllm", metavar="URL", help="this vLLM server (key in $EVOLVD_VLLM_API_KEY)")
    args = parser.parse_args()
    # --small still spans several batches after the first stored one (a rate needs a window).
    labeled, messages, to_label = (200, 40_000, 8) if args.small else (3_000, 100_000, 96)
    # Each of two members must need more than one transaction (a writer merges up to MAX_GROUP_COMMIT
    # polls into one), or every event can land between two looks at the database: no window to time.
    assert messages // 2 > MAX_GROUP_COMMIT * BATCH_MESSAGES, "too few messages for a timed window"
    # A durable server (fsync and synchronous commit on, as in production): DuckDB commits durably too.
    with tempfile.TemporaryDirectory(prefix="evolvd-scale-") as tmp, PostgresServer(durable=True) as server:
        work = Path(tmp)
        writes = labeled_writes(server, labeled, work)
        members = ingest_members(server, messages, work)
        labeling = labelers(server, args.attach_vllm, to_label, work)
    rates = writes["labeled_writes_per_s"]
    failed = []
    if rates["postgres"] < TARGET_LABELED_PER_S:
        failed.append(f"labeled writes on postgres {rates['postgres']}/s < {TARGET_LABELED_PER_S}/s")
    if writes["postgres_vs_duckdb_ratio"] < TARGET_VS_DUCKDB:
        failed.append(
            f"postgres/duckdb labeled writes {writes['postgres_vs_duckdb_ratio']} < {TARGET_VS_DUCKDB}"
        )
    if not members["exactly_once_every_run"]:
        failed.append("an ingest run stored a message twice or lost one")
    if not (labeling["labelers_1"]["labeled_once"] and labeling["labelers_2"]["labeled_once"]):
        failed.append("a labeler run labeled an event twice or left one unlabeled")
    if not writes["same_rows_on_both"]:
        failed.append("the two backends stored different rows for the same results")
    report = {
        "benchmark": "scale",
        "small": args.small,
        **writes,
        **members,
        **labeling,
        "targets": {
            "labeled_writes_per_s_postgres": TARGET_LABELED_PER_S,
            "postgres_vs_duckdb": TARGET_VS_DUCKDB,
        },
        "failed": failed,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "postgres": str(server.bin)},
        "note": "PostgreSQL 15, fsync and synchronous_commit on; one 2-core machine runs the broker, the "
        "server, the members and this harness",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
