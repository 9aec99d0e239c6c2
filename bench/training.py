"""Training throughput: evolvd's training child against a plain TRL script on the same data, one run.

Both train the same LoRA (rank, targets, learning rate, batch, steps, sequence length) on the same
Parquet snapshot of self-labeled examples (mixed formats, as the labeler writes them) with the same
base model and thread count, each in its own process, alternating, `--repeats` times. Measured:
training samples per second over the optimizer steps (model loading excluded on both sides).

- evolvd: `python -m evolvd.training.child SPEC.json`, exactly as the daemon's runner starts it; the
  step timing comes from its progress lines (first to last logged step).
- plain: bench/plain_trl.py, the shortest TRL SFTTrainer script for the same job, timed the same way.

    python bench/training.py [--steps 20] [--repeats 2]

Results: bench/results/training.json with `evolvd_samples_per_s`, `plain_samples_per_s` and
`ratio` (evolvd / plain). Exits 1 below 0.9: the child's supervision must cost next to nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from evolvd.connectors.model_bootstrap import ensure_bundled_model
from evolvd.labeling.prompts import FINISH, direct_completion
from evolvd.precision import resolve
from evolvd.training.child import PROGRESS_PREFIX
from evolvd.training.spec import Hyperparameters, TrainSpec
from evolvd.workload import generate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "training.json"
MODEL_CACHE = ROOT / "var" / "test-cache" / "models"
TARGET_RATIO = 0.9


def snapshot(path: Path, n: int) -> None:
    """Examples shaped like the labeler's: a reasoning path and a direct answer per prompt."""
    prompts, completions = [], []
    tasks = [t for family in ("arithmetic", "comparison", "parity") for t in generate(family, n // 6 + 1, 3)]
    for task in tasks[: n // 2]:
        prompts += [f"{task.prompt}\n\n{FINISH}", task.prompt]
        completions += [
            f"Let me work through it. The question asks: {task.prompt} The answer is {task.gold}.",
            direct_completion(task.gold),
        ]
    pq.write_table(pa.table({"prompt": prompts, "completion": completions}), path)


def step_rate(lines: list[dict[str, Any]], batch: int) -> float:
    """Samples per second between the first and last logged optimizer step."""
    steps = [line for line in lines if line.get("type") == "progress"]
    if len(steps) < 2:
        raise RuntimeError(f"too few progress lines to time: {lines[-3:]}")
    first, last = steps[0], steps[-1]
    seconds = float(last["at"] - first["at"])
    return float(last["step"] - first["step"]) * batch / seconds


def run_timed(command: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """Run a trainer; its progress lines, each stamped with the time it was read."""
    lines: list[dict[str, Any]] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for raw in proc.stdout:
            if raw.startswith(PROGRESS_PREFIX):
                lines.append({**json.loads(raw[len(PROGRESS_PREFIX) :]), "at": time.monotonic()})
            tail = [*tail[-20:], raw]
        if proc.wait() != 0:
            raise RuntimeError(f"{command[2]} failed:\n{''.join(tail)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base = ensure_bundled_model(MODEL_CACHE)
    # The precision the daemon would pick here, written into the spec both scripts read.
    hp = Hyperparameters(max_steps=args.steps, batch_size=args.batch_size, dpo_steps=0, dtype=resolve("auto"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    rates: dict[str, list[float]] = {"evolvd": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="evolvd-bench-training-") as tmp:
        work = Path(tmp)
        data = work / "snapshot.parquet"
        snapshot(data, args.examples)
        for repeat in range(args.repeats):
            spec = TrainSpec(
                run_id=f"bench-{repeat}",
                base_model=str(base.path),
                dataset=str(data),
                output_dir=str(work / f"evolvd-{repeat}"),
                work_dir=str(work / f"evolvd-scratch-{repeat}"),
                hyperparameters=hp,
            )
            spec_path = work / f"spec-{repeat}.json"
            spec.write(spec_path)
            evolvd = run_timed([sys.executable, "-m", "evolvd.training.child", str(spec_path)], env)
            rates["evolvd"].append(step_rate(evolvd, hp.batch_size))
            plain = run_timed([sys.executable, str(ROOT / "bench" / "plain_trl.py"), str(spec_path)], env)
            rates["plain"].append(step_rate(plain, hp.batch_size))
            print(
                f"repeat {repeat}: evolvd {rates['evolvd'][-1]:.2f}, plain {rates['plain'][-1]:.2f} samples/s"
            )
    evolvd_rate, plain_rate = statistics.median(rates["evolvd"]), statistics.median(rates["plain"])
    ratio = evolvd_rate / plain_rate
    result = {
        "benchmark": "training",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "examples": args.examples,
            "repeats": args.repeats,
            "lora_r": hp.lora_r,
            "max_length": hp.max_length,
            "torch_threads": hp.torch_threads,
            "dtype": hp.dtype,
        },
        "evolvd_samples_per_s": round(evolvd_rate, 3),
        "plain_samples_per_s": round(plain_rate, 3),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "all_rates": {k: [round(r, 3) for r in v] for k, v in rates.items()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
