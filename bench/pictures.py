"""The README's pictures, from a real demo run: `evolvd run --demo` (what `make run` starts) on a fresh
data dir, scraped every 5 s by a real Prometheus (Debian's package, as `make test` installs it), until
the loop's first promotion decision; then

- docs/images/dashboard-overview.png and dashboard-training.png: the committed Grafana dashboards
  rendered from their JSON by grafana/render.py, with the swap and decision annotations;
- docs/images/training-loss.png: the first run's loss per step, read back from the TensorBoard event
  files the trainer wrote under data_dir/runs/<run>/tensorboard (what `evolvd adapters show` names);
- bench/results/pictures.json: when each step of the demo happened.

    python bench/pictures.py               # 15-25 minutes on 2 cores (the demo's first cycle)

Nothing here is a speed or quality figure: the pictures show what an operator sees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from evolvd.connectors.embedded_broker import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "grafana"))
from render import render as render_dashboard  # noqa: E402

IMAGES = ROOT / "docs" / "images"
RESULTS = ROOT / "bench" / "results"
SCRAPE_S = 5


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or shutil.which(
        "prometheus", path=str(ROOT / ".venv" / "prometheus" / "usr" / "bin")
    )
    if not found:
        raise SystemExit("prometheus not found: `make test` installs Debian's package into .venv/prometheus")
    return found


@contextmanager
def demo_daemon(data_dir: Path) -> Iterator[str]:
    """`evolvd run --demo` as `make run` starts it, on `data_dir`; yields its admin URL."""
    env = {**os.environ, "EVOLVD_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "EVOLVD_ADMIN__PORT": "0"}
    data_dir.mkdir(parents=True)
    log = open(data_dir.parent / "daemon.log", "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "evolvd.cli", "run", "--config", str(ROOT / "evolvd.yaml"), "--demo"]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (url := _read(data_dir / "admin.url")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the demo daemon did not start; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def prometheus(admin_url: str, token_file: Path, root: Path) -> Iterator[str]:
    """A Prometheus scraping the daemon's /metrics with the token it generated; yields its URL."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "static_configs": [{"targets": [admin_url.removeprefix("http://")]}],
                "authorization": {"credentials_file": str(token_file)},
            }
            for job, path in (("evolvd", "/metrics"), ("evolvd-vllm", "/serving/metrics"))
        ],
    }
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def first_decision(admin_url: str, token: str, deadline_s: float) -> dict[str, Any]:
    """Poll the daemon's /status until the loop's first promotion decision; what it decided."""
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() - started < deadline_s:
        try:
            loop = httpx.get(f"{admin_url}/status", headers=headers, timeout=30).json().get("loop") or {}
        except (httpx.HTTPError, ValueError):
            loop = {}
        if decisions := loop.get("promotion_decisions"):
            decision: dict[str, Any] = decisions[-1]
            return decision
        time.sleep(10)
    raise SystemExit(f"no promotion decision within {deadline_s:.0f} s")


def plot_loss(run_dir: Path, out: Path) -> list[tuple[int, float]]:
    """Each phase's `train/loss` from the run's TensorBoard files, as a line per phase; the SFT points."""
    figure, axes = plt.subplots(figsize=(7, 3.5))
    sft: list[tuple[int, float]] = []
    for phase_dir in sorted((run_dir / "tensorboard").iterdir()):
        events = EventAccumulator(str(phase_dir))
        events.Reload()
        if "train/loss" not in events.Tags()["scalars"]:
            continue
        points = [(e.step, e.value) for e in events.Scalars("train/loss")]
        sft = points if phase_dir.name == "sft" else sft
        axes.plot([s for s, _ in points], [v for _, v in points], marker="o", label=phase_dir.name)
    axes.set_title(f"{run_dir.name}: training loss (from its TensorBoard files)", fontsize=10)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return sft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for a decision")
    parser.add_argument("--images", type=Path, default=IMAGES)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evolvd-pictures-")))
        data_dir = root / "data"
        started = time.time()
        admin_url = stack.enter_context(demo_daemon(data_dir))
        token_file = data_dir / "admin.token"
        prometheus_url = stack.enter_context(prometheus(admin_url, token_file, root))
        decision = first_decision(admin_url, token_file.read_text().strip(), args.timeout)
        decided = time.time()
        print(f"[pictures] first decision after {decided - started:.0f} s: {decision}", flush=True)
        time.sleep(6 * SCRAPE_S)  # a few scrapes after the decision, so its annotation shows
        end = time.time()
        drawn = {}
        for board in ("overview", "training"):
            panels = render_dashboard(
                ROOT / "grafana" / "dashboards" / f"{board}.json",
                prometheus_url,
                started,
                end,
                args.images / f"dashboard-{board}.png",
                step_s=float(SCRAPE_S),
            )
            drawn[board] = {p.title: p.series for p in panels}
        # The run behind the decision: the latest with TensorBoard files (a killed attempt has none).
        run_dir = max((data_dir / "runs").glob("*/tensorboard"), key=lambda p: p.stat().st_mtime).parent
        losses = plot_loss(run_dir, args.images / "training-loss.png")
    result = {
        "benchmark": "pictures",
        "first_decision_s": round(decided - started),
        "decision": decision,
        "run": run_dir.name,
        "sft_loss": losses,
        "panels_drawn": drawn,
        "images": sorted(p.name for p in args.images.glob("*.png")),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pictures.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
