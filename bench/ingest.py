"""Ingest throughput: a raw kafka-python consumer vs evolvd's ingest loop, on the same topic, in one run.

Both read the same N messages (~200-byte contract-conforming JSON) from the embedded broker through
kafka-python with the same fetch settings. The raw consumer only iterates the records; evolvd
validates each one and commits events plus offsets to a real DuckDB file. The sides alternate
`--repeats` times (fresh consumer group, fresh buffer each) and the medians are compared.

Both clocks start once the first batch is through (the raw consumer's first poll, evolvd's first
commit) and that batch is left out of the count, so group-join time is excluded on both sides.
Over the same windows the run records CPU time per message (the consumer's process, the broker's)
and how many of the machine's cores were busy: whether a side is short of cores or of the GIL.

    python bench/ingest.py [--messages 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from evolvd.abc import IngestBatch, IngestResult, Source
from evolvd.app import GIL_SWITCH_INTERVAL_S
from evolvd.buffer import DuckDBBuffer
from evolvd.config import FetcherKind, IngestConfig, KafkaConfig
from evolvd.connectors.embedded_broker import EmbeddedBroker
from evolvd.connectors.kafka_process import KafkaProcessSource, open_kafka_source
from evolvd.connectors.kafka_source import ensure_topic
from evolvd.ingest import IngestLoop
from evolvd.metrics import IngestMetrics, new_registry

RESULTS = Path(__file__).parent / "results" / "ingest.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PARTITIONS = 4
BATCH = 2000
TIMEOUT_S = 300


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


@dataclass(frozen=True)
class Run:
    msgs_per_s: float
    cpu: dict[str, float]


class CpuMeter:
    """CPU seconds over one timed window: the consumer (this process, every thread, DuckDB's included,
    plus evolvd's fetcher process when it has one), the broker process, and the whole machine. They
    tell whether a side is short of cores or of the GIL."""

    def __init__(self, broker_pid: int) -> None:
        self._broker_pid = broker_pid
        self.fetcher_pid: int | None = None

    def _read(self) -> tuple[float, float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = usage.ru_utime + usage.ru_stime + (process_cpu_s(self.fetcher_pid) if self.fetcher_pid else 0.0)
        with open("/proc/stat") as f:
            cpu = [int(v) for v in f.readline().split()[1:]]
        machine_busy = (sum(cpu) - cpu[3] - cpu[4]) / CLOCK_TICKS  # all but idle and iowait
        return own, process_cpu_s(self._broker_pid), machine_busy, time.perf_counter()

    def start(self) -> None:
        self._start = self._read()

    def stop(self, messages: int) -> dict[str, float]:
        end = self._read()
        own, broker, machine, wall = (b - a for a, b in zip(self._start, end, strict=True))
        return {
            "consumer_cpu_us_per_msg": 1e6 * own / messages,
            "broker_cpu_us_per_msg": 1e6 * broker / messages,
            "machine_cores_busy": machine / wall,
            "consumer_cores_busy": own / wall,
        }


def make_message(i: int) -> bytes:
    body = {
        "id": f"bench-{i:09d}",
        "prompt": f"Question {i}: what is {i % 97} plus {i % 89}? "
        "Think it through, then answer with a number only.",
        "metadata": {"source": "bench", "tenant": f"tenant-{i % 7}"},
        "ts": 1763750000.0 + i / 1000,
    }
    return json.dumps(body).encode()


def produce(bootstrap: str, topic: str, n: int) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256 * 1024)
    for i in range(n):
        producer.send(topic, make_message(i), partition=i % PARTITIONS)
    producer.flush()
    producer.close()
    return statistics.mean(len(make_message(i)) for i in range(0, n, max(1, n // 100)))


def raw_rate(bootstrap: str, topic: str, n: int, kafka: KafkaConfig, meter: CpuMeter) -> Run:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"raw-{uuid.uuid4().hex}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_records=BATCH,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    seen, first, started = 0, 0, 0.0
    deadline = time.monotonic() + TIMEOUT_S
    while seen < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=BATCH).values():
            for _record in records:
                seen += 1
        if not first and seen:
            first, started = seen, time.perf_counter()
            meter.start()
    elapsed = time.perf_counter() - started
    cpu = meter.stop(n - first)
    consumer.close(autocommit=False)
    if seen < n:
        raise RuntimeError(f"raw consumer saw only {seen}/{n}")
    return Run((n - first) / elapsed, cpu)


class TimedBuffer(DuckDBBuffer):
    """The buffer evolvd writes, clocked from its own commits.

    The clock starts after the first commit and stops at the commit that makes `target` events
    durable, on the writer thread itself. Nothing polls the loop under test: reading the metrics
    registry instead (every 10 ms) collected the process collector under the GIL and took about a
    tenth of the poller's time, which the raw side never paid.
    """

    def __init__(self, path: Path, target: int, meter: CpuMeter) -> None:
        super().__init__(path)
        self._target = target
        self._meter = meter
        self.committed = 0
        self.first = 0
        self.started = self.ended = 0.0
        self.cpu: dict[str, float] = {}
        self.done = threading.Event()

    def write_ingest_batch(self, batch: IngestBatch) -> IngestResult:
        result = super().write_ingest_batch(batch)
        self.committed += result.inserted
        if not self.first and self.committed:
            self.first, self.started = self.committed, time.perf_counter()
            self._meter.start()
        elif self.committed >= self._target and not self.done.is_set():
            self.ended = time.perf_counter()
            self.cpu = self._meter.stop(self.committed - self.first)
            self.done.set()
        return result


def evolvd_rate(
    bootstrap: str, topic: str, n: int, workdir: Path, meter: CpuMeter, fetcher: FetcherKind
) -> Run:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic=topic, group_id=f"evolvd-{uuid.uuid4().hex}")
    ingest = IngestConfig(batch_max_messages=BATCH, backlog_high_watermark=10 * n, backlog_low_watermark=n)
    buffer = TimedBuffer(workdir / f"{uuid.uuid4().hex}.duckdb", n, meter)

    def new_source(drain: Callable[[], None]) -> Source:
        source = open_kafka_source(
            fetcher, kafka, bootstrap, lambda: buffer.stored_offsets(topic), drain, BATCH
        )
        meter.fetcher_pid = source.pid if isinstance(source, KafkaProcessSource) else None
        return source

    loop = IngestLoop(
        new_source,
        buffer,
        ingest,
        IngestMetrics.create(new_registry()),
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    buffer.done.wait(TIMEOUT_S)
    stop.set()
    thread.join()
    count = buffer.table_counts()["events"]
    buffer.close()
    if count != n or not buffer.done.is_set():
        raise RuntimeError(f"evolvd buffered {count} events, expected {n}")
    return Run((buffer.committed - buffer.first) / (buffer.ended - buffer.started), buffer.cpu)


def median_cpu(runs: list[Run]) -> dict[str, float]:
    return {key: round(statistics.median(r.cpu[key] for r in runs), 2) for key in runs[0].cpu}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The daemon runs with this interpreter setting (evolvd.app); the single-threaded raw consumer
    # is unaffected by it, so both sides run as they would in production.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        topic = "bench.ingest"
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic=topic)
        ensure_topic(kafka, broker.bootstrap_servers, PARTITIONS)
        mean_bytes = produce(broker.bootstrap_servers, topic, args.messages)
        assert broker.pid is not None
        meter = CpuMeter(broker.pid)
        raw_runs: list[Run] = []
        our_runs: list[Run] = []
        thread_runs: list[Run] = []
        for i in range(args.repeats):
            raw_runs.append(raw_rate(broker.bootstrap_servers, topic, args.messages, kafka, meter))
            sides: tuple[tuple[FetcherKind, list[Run]], ...] = (
                ("process", our_runs),
                ("thread", thread_runs),
            )
            for fetcher, runs in sides:
                runs.append(
                    evolvd_rate(broker.bootstrap_servers, topic, args.messages, Path(tmp), meter, fetcher)
                )
            print(
                f"round {i + 1}: raw {raw_runs[-1].msgs_per_s:,.0f} msg/s, "
                f"evolvd {our_runs[-1].msgs_per_s:,.0f} msg/s "
                f"(fetcher in a thread: {thread_runs[-1].msgs_per_s:,.0f})",
                file=sys.stderr,
            )

    raw = [r.msgs_per_s for r in raw_runs]
    ours = [r.msgs_per_s for r in our_runs]
    threaded = statistics.median(r.msgs_per_s for r in thread_runs)
    raw_med, ours_med = statistics.median(raw), statistics.median(ours)
    result = {
        "benchmark": "ingest",
        "messages": args.messages,
        "mean_message_bytes": round(mean_bytes, 1),
        "partitions": PARTITIONS,
        "repeats": args.repeats,
        "raw_msgs_per_s": round(raw_med),
        "evolvd_msgs_per_s": round(ours_med),
        "ratio": round(ours_med / raw_med, 3),
        "target_ratio": 0.8,
        "raw_runs": [round(r) for r in raw],
        "evolvd_runs": [round(r) for r in ours],
        # The same loop with `ingest.fetcher: thread` (kafka-python parsing in the daemon's process).
        "thread_fetcher_msgs_per_s": round(threaded),
        "thread_fetcher_ratio": round(threaded / raw_med, 3),
        "cpu": {
            "raw": median_cpu(raw_runs),
            "evolvd": median_cpu(our_runs),
            "evolvd_thread_fetcher": median_cpu(thread_runs),
        },
        "cpus": os.cpu_count(),
        "gil_switch_interval_s": GIL_SWITCH_INTERVAL_S,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] >= result["target_ratio"] else 1


if __name__ == "__main__":
    sys.exit(main())
