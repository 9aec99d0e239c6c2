"""A real Prometheus scraping a live evolvd on loopback, with the shipped alert rules loaded.

Every query of every Grafana panel must parse and return data; every series an alert rule reads must
exist; and the dead-letter alert must fire when a producer sends garbage. Prometheus is Debian's
package (`make test` installs it into .venv/prometheus when it is not on PATH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_process import DaemonProcess
from helpers import attached_env, produce, wait_for

from evolvd.connectors.embedded_broker import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "grafana"))
from render import annotation_events, render

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# What Grafana substitutes before a query reaches Prometheus: every instance, and a rate window
# that spans several of this test's 1 s scrapes.
GRAFANA_VARIABLES = {"$instance": ".*", "$__rate_interval": "15s", "$vllm_job": "evolvd-vllm"}
# The series a PromQL expression reads: evolvd's, vLLM's, and `up{...}`.
SELECTOR = re.compile(r"(evolvd_[a-z0-9_]+|vllm:[a-z0-9_:]+|\bup(?=\{))(\{[^}]*\})?")


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv" / "prometheus" / "usr" / "bin"))
    assert found, f"{name} not found: `make test` installs Debian's prometheus package into .venv/prometheus"
    return found


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; a parse or evaluation error fails the test with Prometheus's message."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}\n-> {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"][
            "alerts"
        ]
        return alerts


@pytest.fixture(scope="module")
def daemon(
    broker: Any, vllm_daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """A full daemon (loop, labeling, gateway) attached to the session's vLLM server."""
    env = attached_env(broker, vllm_daemon, "monitoring")
    process = DaemonProcess(tmp_path_factory.mktemp("monitoring") / "data", env).start(timeout_s=180)
    yield process
    assert process.stop(timeout_s=120) == 0, process.tail()


@pytest.fixture(scope="module")
def prometheus(daemon: DaemonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    root = tmp_path_factory.mktemp("prometheus")
    target = daemon.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],  # the shipped rules, unchanged
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": path,
                "static_configs": [{"targets": [target]}],
                # The token the daemon generated into its data_dir, read as deploy/prometheus does.
                "authorization": {"credentials_file": str(daemon.data_dir / "admin.token")},
            }
            for job, path in (("evolvd", "/metrics"), ("evolvd-vllm", "/serving/metrics"))
        ],
    }
    config_file = root / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [binary("promtool"), "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    port = free_port()
    log = open(root / "prometheus.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")

        def ready() -> bool:
            try:
                return httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "Prometheus to be ready", 60, 0.5)
        # rate() needs two samples in its window; wait for a few scrapes of both jobs.
        wait_for(
            lambda: len(server.query("count_over_time(up[1m]) >= 4 and up == 1")) == 2,
            "four successful scrapes of both jobs",
            60,
            0.5,
        )
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression) of every target of every panel."""
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found.append((path.stem, panel["title"], target["expr"]))
    return found


def substituted(template: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        template = template.replace(variable, value)
    assert "$" not in template, f"unsubstituted variable in {template}"
    return template


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_shipped_rules_and_config_pass_promtool() -> None:
    rules = subprocess.run(
        [binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    shipped = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    syntax = subprocess.run(
        [binary("promtool"), "check", "config", "--syntax-only", str(shipped)], capture_output=True, text=True
    )
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_every_dashboard_panel_query_parses_and_returns_data(prometheus: Prometheus) -> None:
    queries = panel_queries()
    assert len(DASHBOARDS) == 6 and len(queries) > 60
    empty = []
    for dashboard, title, template in queries:
        expr = substituted(template)
        if not prometheus.query(expr):
            empty.append(f"{dashboard} / {title}: {expr}")
    assert not empty, "panels with no data:\n" + "\n".join(empty)
    # The annotations (swaps, promotions, rollbacks) mark events: they parse and run, and are empty
    # until something happens.
    annotations = [a for path in DASHBOARDS for a in json.loads(path.read_text())["annotations"]["list"]]
    assert len(annotations) == 4 * len(DASHBOARDS)
    for annotation in annotations:
        prometheus.query(substituted(annotation["expr"]))
    # The dashboards' `instance` variable lists the daemon.
    values = httpx.get(
        f"{prometheus.url}/api/v1/label/instance/values", params={"match[]": "evolvd_build_info"}, timeout=10
    ).json()["data"]
    assert values == [prometheus_target(prometheus)]


def test_no_evolvd_label_collides_with_a_prometheus_target_label(prometheus: Prometheus) -> None:
    """`job` and `instance` are the scrape's own labels: a metric label of that name is renamed
    `exported_job` and every query grouping by it silently groups by the scrape job instead."""
    renamed = prometheus.query(
        'count by (__name__) ({__name__=~"evolvd_.*", exported_job!=""})'
        ' or count by (__name__) ({__name__=~"evolvd_.*", exported_instance!=""})'
    )
    assert renamed == [], [r["metric"]["__name__"] for r in renamed]
    loop_jobs = prometheus.query('count by (loop_job) (evolvd_job_runs_total{job="evolvd"})')
    assert {r["metric"]["loop_job"] for r in loop_jobs} >= {"labeling", "training", "promotion"}


def prometheus_target(prometheus: Prometheus) -> str:
    (result,) = prometheus.query('up{job="evolvd"}')
    instance: str = result["metric"]["instance"]
    return instance


def test_every_alert_rule_parses_and_every_series_it_reads_exists(prometheus: Prometheus) -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "EvolvdConsumerLagGrowing",
        "EvolvdLabelingStalled",
        "EvolvdTrainingStalled",
        "EvolvdPromotionRejectingRepeatedly",
        "EvolvdDriftGuardTripped",
        "EvolvdAdapterRolledBack",
        "EvolvdServingDown",
        "EvolvdServingRestarting",
        "EvolvdDeadLettersSpiking",
        "EvolvdDataDiskNearlyFull",
    }
    missing = []
    for rule in rules:
        prometheus.query(rule["expr"])  # parses and evaluates
        selectors = [m.group(0) for m in SELECTOR.finditer(rule["expr"])]
        assert selectors, rule["alert"]
        missing += [f"{rule['alert']}: {s}" for s in selectors if not prometheus.query(s)]
    assert not missing, "series the alert rules read that the daemon does not export:\n" + "\n".join(missing)
    # Loaded by the server too, with nothing firing on a healthy daemon.
    loaded = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in loaded) == len(rules)
    assert [a["labels"]["alertname"] for a in prometheus.alerts() if a["state"] == "firing"] == []


def test_the_dead_letter_alert_fires_when_a_producer_sends_garbage(
    broker: Any, daemon: DaemonProcess, prometheus: Prometheus
) -> None:
    topic = daemon.env["EVOLVD_KAFKA__TOPIC"]
    garbage = [b"\xff\xfe not utf-8 %d" % i for i in range(40)] + [b"{not json %d" % i for i in range(40)]
    produce(daemon.env["EVOLVD_KAFKA__BOOTSTRAP_SERVERS"], topic, garbage)

    def firing() -> dict[str, Any] | None:
        for alert in prometheus.alerts():
            if alert["labels"]["alertname"] == "EvolvdDeadLettersSpiking" and alert["state"] == "firing":
                return alert
        return None

    alert = wait_for(firing, "the dead-letter alert to fire", 90, 1.0, daemon)
    assert alert["labels"]["severity"] == "warning"
    assert "dead letters in 10 minutes" in alert["annotations"]["summary"]
    reasons = prometheus.query('sum by (reason) (evolvd_dead_letters_total{job="evolvd"}) > 0')
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in reasons} == {
        "not_utf8": 40.0,
        "not_json": 40.0,
    }


def test_the_overview_dashboard_renders_from_its_json_with_live_data(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    """grafana/render.py (the README's dashboard picture) draws every panel of the committed JSON from
    this Prometheus: each time series panel with its series, each stat with its value."""
    dashboard, out = ROOT / "grafana" / "dashboards" / "overview.json", tmp_path / "overview.png"
    end = time.time()
    drawn = render(dashboard, prometheus.url, end - 120, end, out, 2.0)
    board = json.loads(dashboard.read_text())
    assert [p.title for p in drawn] == [p["title"] for p in board["panels"] if p["type"] != "row"]
    assert all(p.series >= 1 for p in drawn), [p for p in drawn if not p.series]
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_annotation_events_start_where_their_series_starts() -> None:
    """Grafana marks an annotation where its query's series appears; `increase(...[2m]) > 0` stays
    present for two minutes after one event, which must stay one mark (a fake range, no server)."""

    class TwoEvents:
        step_s = 15.0

        def series(self, expr: str) -> list[dict[str, Any]]:
            present = [0, 15, 30, 45, 300, 315]  # one run from 0 s, another from 300 s
            return [{"metric": {"action": "promote", "instance": "x"}, "values": [[t, "1"] for t in present]}]

    board = {"annotations": {"list": [{"name": "Swaps", "iconColor": "blue", "expr": "up", "enable": True}]}}
    events = annotation_events(board, TwoEvents(), {})
    assert [(e.at, e.name, e.text, e.color) for e in events] == [
        (0.0, "Swaps", "promote", "blue"),
        (300.0, "Swaps", "promote", "blue"),
    ]
