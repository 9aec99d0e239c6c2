"""Scale-out: what the shared PostgreSQL buffer buys, against the embedded DuckDB buffer, in one run.

1. Labeled-event writes per second: the same labeler results (every row of one labeled event and its
   state, one transaction each, through evolvd.labeling.labeler.write_result) written to a DuckDB
   file by its one writer, and to PostgreSQL by one and by several writer threads.
2. Ingest members: M messages through `evolvd run --role ingest` processes on one PostgreSQL buffer,
   one member and then two in one consumer group, against a raw kafka-python consumer of the same
   topic; every run is checked for exactly-once (M distinct events, M rows).

Labeler throughput with 1 and 2 `--role label` processes against one vLLM is not measured yet:
`labelers_2_vs_1_ratio` is null with that reason. This machine has 2 cores: two members cannot run
twice as fast here, so the report gives the CPU each side used.

    python bench/scale.py [--small]
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


def main() -> int:
    # SIGTERM unwinds like Ctrl-C: the private PostgreSQL server, the broker and the members stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a minute: checks the harness, proves little")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # --small still spans several batches after the first stored one (a rate needs a window).
    labeled, messages = (200, 40_000) if args.small else (3_000, 100_000)
    # Each of two members must need more than one transaction (a writer merges up to MAX_GROUP_COMMIT
    # polls into one), or every event can land between two looks at the database: no window to time.
    assert messages // 2 > MAX_GROUP_COMMIT * BATCH_MESSAGES, "too few messages for a timed window"
    # A durable server (fsync and synchronous commit on, as in production): DuckDB commits durably too.
    with tempfile.TemporaryDirectory(prefix="evolvd-scale-") as tmp, PostgresServer(durable=True) as server:
        work = Path(tmp)
        writes = labeled_writes(server, labeled, work)
        members = ingest_members(server, messages, work)
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
    if not writes["same_rows_on_both"]:
        failed.append("the two backends stored different rows for the same results")
    report = {
        "benchmark": "scale",
        "small": args.small,
        **writes,
        **members,
        "labelers_2_vs_1_ratio": None,
        "labelers_note": "labeler throughput with 1 and 2 `--role label` processes against one vLLM is not"
        " measured yet (tests/test_postgres_labelers.py checks four of them for exactly-once)",
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
