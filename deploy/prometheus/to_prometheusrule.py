"""Write deploy/k8s/prometheusrule.yaml from alerts.yml: the same rules for the Prometheus Operator; and
copy alerts.yml into the Helm chart (deploy/helm/evolvd/files/alerts.yml), which renders its own.

    python deploy/prometheus/to_prometheusrule.py

alerts.yml stays the one source (promtool and tests/test_monitoring.py check it); the PrometheusRule
is generated from it, and tests/test_deploy.py fails when the committed copy is out of date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE / "alerts.yml"
TARGET = HERE.parent / "k8s" / "prometheusrule.yaml"
CHART_COPY = HERE.parent / "helm" / "evolvd" / "files" / "alerts.yml"
HEADER = (
    "# Generated from deploy/prometheus/alerts.yml by deploy/prometheus/to_prometheusrule.py: edit those.\n"
)


def prometheus_rule(alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "evolvd",
            "namespace": "evolvd",
            # The labels of the ServiceMonitor beside it; add what your Prometheus's ruleSelector wants.
            "labels": {"app.kubernetes.io/name": "evolvd"},
        },
        "spec": {"groups": alerts["groups"]},
    }


def render() -> str:
    rule = prometheus_rule(yaml.safe_load(ALERTS.read_text()))
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__":
    TARGET.write_text(render())
    CHART_COPY.write_text(ALERTS.read_text())
    print(f"wrote {TARGET} and {CHART_COPY}")
