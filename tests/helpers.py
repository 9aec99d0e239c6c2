"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from evolvd.abc import IngestBatch

T = TypeVar("T")

GATEWAY_API_KEY = "test-key-" + uuid.uuid4().hex[:8]
"""The gateway key of the session's vLLM daemon (conftest.vllm_daemon)."""


def prompt_message(i: int, **extra: Any) -> bytes:
    return json.dumps({"id": f"msg-{i:06d}", "prompt": f"What is {i} + 1?", **extra}).encode()


def produce(bootstrap: str, topic: str, values: Sequence[bytes | None], partition: int | None = None) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for n, value in enumerate(values):
        # A key on every record: a tombstone (value None) is only valid with one.
        producer.send(topic, key=f"k{n}".encode(), value=value, partition=partition)
    producer.flush()
    producer.close()


def attached_env(broker: Any, vllm_daemon: Any, topic_prefix: str) -> dict[str, str]:
    """Environment for a daemon on a fresh topic and group, attached in external mode to the session's
    vLLM server (conftest.vllm_daemon), with its gateway on a free port."""
    serving = vllm_daemon.status()["serving"]
    return {
        "EVOLVD_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "EVOLVD_KAFKA__TOPIC": f"{topic_prefix}-{uuid.uuid4().hex[:8]}",
        "EVOLVD_KAFKA__GROUP_ID": f"g-{uuid.uuid4().hex}",
        "EVOLVD_SERVING__ENABLED": "true",
        "EVOLVD_SERVING__MODE": "external",
        "EVOLVD_SERVING__URL": serving["url"],
        "EVOLVD_SERVING__MODEL_PATH": serving["base_model"]["path"],
        "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key,
        "EVOLVD_GATEWAY__PORT": "0",
    }


def quick_loop_env(max_length: int) -> dict[str, str]:
    """A loop that turns in seconds: every job checked every second or two, and tiny training runs (3
    steps, no DPO) on sequences of at most `max_length` tokens."""
    return {
        "EVOLVD_SCHEDULER__LABELING__INTERVAL_S": "1",
        "EVOLVD_SCHEDULER__POLICIES__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__TRAINING__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__EVALUATION__INTERVAL_S": "2",
        "EVOLVD_SCHEDULER__PROMOTION__INTERVAL_S": "1",
        "EVOLVD_TRAINING__MAX_STEPS": "3",
        "EVOLVD_TRAINING__BATCH_SIZE": "4",
        "EVOLVD_TRAINING__MAX_LENGTH": str(max_length),
        "EVOLVD_TRAINING__DPO_STEPS": "0",
        "EVOLVD_TRAINING__RETRY_BACKOFF_S": "1",
    }


def run_small_bench(script: str, out: Any, vllm_daemon: Any) -> tuple[subprocess.CompletedProcess[str], Any]:
    """A bench script's --small mode attached to the session's vLLM server: (the process, its report)."""
    import os
    from pathlib import Path

    harness = Path(__file__).resolve().parents[1] / "bench" / script
    result = subprocess.run(
        [sys.executable, str(harness), "--small", "--out", str(out),
         "--attach-vllm", vllm_daemon.status()["serving"]["url"]],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    # 0, or 1 when the run missed a target: anything else is a crash of the harness.
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(Path(out).read_text())


def run_cli(*args: str, env: Mapping[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the `evolvd` command as an operator would (a separate process), capturing its output."""
    return subprocess.run([sys.executable, "-m", "evolvd.cli", *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout_s)  # fmt: skip


def wait_for(
    check: Callable[[], T | None],
    what: str,
    timeout_s: float = 20.0,
    interval_s: float = 0.1,
    tail: Any = None,
) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout_s` naming
    `what` (with the log tail of `tail`, a DaemonProcess, when given)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    log = f":\n{tail.tail(60)}" if tail is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{log}")


def batch_of(ids: list[str], topic: str = "t", partition: int = 0, first_offset: int = 0) -> IngestBatch:
    """One sealed ingest batch of prompts with these ids, at consecutive offsets of one partition."""
    from evolvd.abc import IngestBatch, Record
    from evolvd.contract import decode_into, encode_message

    batch = IngestBatch()
    for n, ident in enumerate(ids):
        decode_into(
            Record(topic, partition, first_offset + n, encode_message(ident, f"prompt {ident}")), 4096, batch
        )
    batch.next_offsets[(topic, partition)] = first_offset + len(ids)
    return batch.seal()


@dataclass(frozen=True)
class SmallRun:
    """One bench harness's --small run: its exit status, its report (None if it wrote none), the end
    of its output."""

    returncode: int
    report: Any
    output: str


def run_small_benches_at_once(
    commands: Mapping[str, list[str]], folder: Any, vllm_daemon: Any, timeout_s: float = 900
) -> dict[str, SmallRun]:
    """Bench harnesses (`bench/NAME.py --small` plus their arguments, each given `--out`) run at the
    same time: each mostly waits on the session's one vLLM server, which batches their requests, so
    together they take about as long as the slowest alone. Output goes to files (a pipe nobody reads
    while another harness is awaited would stall it)."""
    import os
    from contextlib import ExitStack
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EVOLVD_VLLM_API_KEY": vllm_daemon.vllm_key}
    runs: dict[str, SmallRun] = {}
    with ExitStack() as stack:
        started = {}
        for name, args in commands.items():
            log = stack.enter_context(open(Path(folder) / f"{name}.log", "w"))
            out = Path(folder) / f"{name}.json"
            command = [sys.executable, str(bench / f"{name}.py"), "--small", *args, "--out", str(out)]
            started[name] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        try:
            for name, process in started.items():
                process.wait(timeout=timeout_s)
                out = Path(folder) / f"{name}.json"
                report = json.loads(out.read_text()) if out.exists() else None
                output = (Path(folder) / f"{name}.log").read_text()[-6000:]
                runs[name] = SmallRun(process.returncode, report, output)
        finally:
            for process in started.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return runs
