"""Render a dashboard's JSON to a PNG from a real Prometheus, with its annotations.

Grafana itself is not on PyPI or in Debian's main archive, so the pictures in the README and
bench/README.md are drawn from the committed dashboard JSON by this module: each panel at its grid
position, each target's PromQL run as a range query (the dashboard's variables substituted as Grafana
would), the `legendFormat` applied, and every annotation query drawn as a marked line across the
time series panels where its series starts. Stat panels show their last value.

    python grafana/render.py grafana/dashboards/overview.json --prometheus http://127.0.0.1:9090 \\
        --minutes 30 --out overview.png
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

GRID_COLUMNS = 24
INCHES_PER_COLUMN = 0.75
INCHES_PER_ROW = 0.34  # Grafana's grid row is 30 px against a ~66 px column at 1,600 px wide
HEADER_INCHES = 0.9  # the title and the annotation key
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@dataclass(frozen=True)
class Annotation:
    name: str
    color: str
    at: float  # epoch seconds where the annotation's series starts
    text: str


@dataclass(frozen=True)
class RenderedPanel:
    title: str
    kind: str
    series: int  # how many series (time series panels) or values (stat panels) were drawn


class RangeQueries(Protocol):
    step_s: float

    def series(self, expr: str) -> list[dict[str, Any]]: ...


class PrometheusRange:
    """The range and instant queries a dashboard needs, against one Prometheus."""

    def __init__(self, url: str, start: float, end: float, step_s: float) -> None:
        self.url = url.rstrip("/")
        self.start, self.end, self.step_s = start, end, step_s

    def series(self, expr: str) -> list[dict[str, Any]]:
        return self._get(
            "query_range", {"query": expr, "start": self.start, "end": self.end, "step": self.step_s}
        )

    def latest(self, expr: str) -> list[dict[str, Any]]:
        return self._get("query", {"query": expr, "time": self.end})

    def _get(self, endpoint: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=30)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise ValueError(f"Prometheus refused {params['query']!r}: {body.get('error', response.text)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def grafana_variables(dashboard: dict[str, Any], step_s: float) -> dict[str, str]:
    """What Grafana substitutes: every instance, a rate window of four steps, textbox defaults."""
    values = {"$__rate_interval": f"{int(4 * step_s)}s", "${datasource}": "prometheus"}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable["name"]
        if variable["type"] == "query":
            values[f"${name}"] = variable.get("allValue") or ".*"
        elif variable["type"] == "textbox":
            values[f"${name}"] = str(variable.get("query", ""))
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    # Longest names first, so `$instance_id` would never be cut by `$instance`.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr


def legend(target: dict[str, Any], labels: dict[str, str]) -> str:
    template = target.get("legendFormat") or ""
    if template and template != "__auto":
        return LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)
    shown = {k: v for k, v in labels.items() if k not in ("instance", "job")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or target.get("refId", "")


def annotation_events(
    dashboard: dict[str, Any], prometheus: RangeQueries, variables: dict[str, str]
) -> list[Annotation]:
    """Each annotation query's events: the first step of every run of steps where its series has a value
    (Grafana marks the same; `increase(...[2m]) > 0` stays present for the window after an event)."""
    found = []
    for query in dashboard.get("annotations", {}).get("list", []):
        if not query.get("enable", True) or "expr" not in query:
            continue
        for series in prometheus.series(substitute(query["expr"], variables)):
            text = ", ".join(v for k, v in series["metric"].items() if k not in ("instance", "job"))
            previous = None
            for at, _ in series["values"]:
                if previous is None or at - previous > prometheus.step_s * 1.5:
                    found.append(Annotation(query["name"], query.get("iconColor", "grey"), float(at), text))
                previous = at
    return sorted(found, key=lambda a: a.at)


def render(
    dashboard_path: Path, prometheus_url: str, start: float, end: float, out: Path, step_s: float = 15.0
) -> list[RenderedPanel]:
    """Draw the dashboard between `start` and `end` (epoch seconds) into `out` (PNG); what was drawn."""
    dashboard = json.loads(dashboard_path.read_text())
    prometheus = PrometheusRange(prometheus_url, start, end, step_s)
    variables = grafana_variables(dashboard, step_s)
    events = annotation_events(dashboard, prometheus, variables)
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, height = GRID_COLUMNS * INCHES_PER_COLUMN, HEADER_INCHES + rows * INCHES_PER_ROW + 0.1
    figure = plt.figure(figsize=(width, height))
    figure.text(
        0.01,
        1 - 0.15 / height,
        f"{dashboard['title']}: {_clock(start)} to {_clock(end)}"
        " (rendered from its JSON by grafana/render.py)",
        fontsize=13,
        va="top",
    )
    drawn = []
    for panel in panels:
        axes = figure.add_axes(_box(panel["gridPos"], height))
        if panel["type"] == "row":
            axes.axis("off")
            axes.text(0, 0.5, panel["title"], fontsize=12, fontweight="bold", va="center")
            continue
        if panel["type"] == "timeseries":
            count = _draw_timeseries(axes, panel, prometheus, variables, events)
        elif panel["type"] == "stat":
            count = _draw_stat(axes, panel, prometheus, variables)
        else:
            axes.axis("off")
            axes.set_title(f"{panel['title']} ({panel['type']} panels are not drawn)", fontsize=9)
            count = 0
        drawn.append(RenderedPanel(panel["title"], panel["type"], count))
    _annotation_key(figure, events)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return drawn


def _box(grid: dict[str, int], height_in: float) -> tuple[float, float, float, float]:
    """The panel's axes rectangle in figure fractions: its grid cell, less room for the panel's title
    above and the tick labels below (none for a row header)."""
    top_in = HEADER_INCHES + grid["y"] * INCHES_PER_ROW
    bottom_in = HEADER_INCHES + (grid["y"] + grid["h"]) * INCHES_PER_ROW
    if grid["h"] > 1:
        top_in, bottom_in = top_in + 0.35, bottom_in - 0.35
    left = grid["x"] / GRID_COLUMNS + 0.035
    width = grid["w"] / GRID_COLUMNS - 0.05
    return left, 1 - bottom_in / height_in, width, (bottom_in - top_in) / height_in


def _draw_timeseries(
    axes: Any,
    panel: dict[str, Any],
    prometheus: PrometheusRange,
    variables: dict[str, str],
    events: list[Annotation],
) -> int:
    count = 0
    for target in panel.get("targets", []):
        for series in prometheus.series(substitute(target["expr"], variables)):
            times = [datetime.fromtimestamp(float(t)) for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            axes.plot(times, values, linewidth=1.4, label=legend(target, series["metric"]))
            count += 1
    for event in events:
        at = datetime.fromtimestamp(event.at)
        axes.axvline(at, color=event.color, linestyle="--", linewidth=1.0, alpha=0.8)
    axes.set_xlim(datetime.fromtimestamp(prometheus.start), datetime.fromtimestamp(prometheus.end))
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))  # type: ignore[no-untyped-call]
    axes.set_title(panel["title"], fontsize=10, loc="left")
    unit = unit_of(panel)
    if unit not in ("short", "none"):
        axes.set_ylabel(unit, fontsize=8)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if count:
        axes.legend(fontsize=7, loc="upper left")
    else:
        axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", color="grey")
    return count


def _draw_stat(
    axes: Any, panel: dict[str, Any], prometheus: PrometheusRange, variables: dict[str, str]
) -> int:
    axes.axis("off")
    axes.set_title(panel["title"], fontsize=10, loc="left")
    lines = []
    for target in panel.get("targets", []):
        for series in prometheus.latest(substitute(target["expr"], variables)):
            # Grafana's "auto" text: the value alone, unless the legend names the series (an info
            # metric such as the live adapter's, whose value is always 1, shows its name).
            named = target.get("legendFormat") not in (None, "", "__auto")
            name = legend(target, series["metric"]) if named else ""
            lines.append(name if named else _formatted(float(series["value"][1]), unit_of(panel)))
    text = "\n".join(lines[:3])
    axes.text(0.5, 0.4, text or "no data", ha="center", va="center", fontsize=15 if len(lines) <= 1 else 10)
    return len(lines)


def unit_of(panel: dict[str, Any]) -> str:
    return str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"))


def _formatted(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{100 * value:.1f}%"
    if unit == "bytes":
        return f"{value / 2**30:.1f} GiB"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:g}"


def _annotation_key(figure: Any, events: list[Annotation]) -> None:
    """A line under the title naming each annotation (time, kind, labels), as Grafana's hover would."""
    if not events:
        text = "annotations: none in this range"
    else:
        text = "annotations: " + "; ".join(f"{_clock(e.at)} {e.name} ({e.text})" for e in events[:12])
    figure.text(0.01, 1 - 0.5 / figure.get_figheight(), text, fontsize=8, va="top", wrap=True)


def _clock(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s).strftime("%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("--prometheus", required=True, help="the Prometheus URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=30.0, help="the range, ending now")
    parser.add_argument("--step", type=float, default=15.0, help="seconds between points")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    end = time.time()
    for panel in render(args.dashboard, args.prometheus, end - 60 * args.minutes, end, args.out, args.step):
        print(f"{panel.kind:10} {panel.series:3}  {panel.title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
