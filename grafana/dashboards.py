"""evolvd's Grafana dashboards, as code: `python grafana/dashboards.py` writes grafana/dashboards/*.json.

Built with Grafana's own foundation SDK (grafana-foundation-sdk), whose builders are generated from
Grafana's dashboard schema and check its constraints as the dashboard is built (panel sizes, required
fields), so a dashboard that builds is one Grafana's schema accepts. `--check` rebuilds them and fails
if the committed JSON differs (tests/test_deploy.py runs it); tests/test_monitoring.py runs every
panel query against a real Prometheus scraping a live daemon.

Every query filters on `$instance` (one daemon, or all) and uses `$__rate_interval`, so the panels
follow whatever scrape interval the Prometheus behind them has.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dashboard_builder
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    AnnotationQuery,
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)
from panel_help import PANEL_HELP

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
I = 'instance=~"$instance"'  # noqa: E741 - the selector every query carries; short keeps queries readable
VLLM = f'job="$vllm_job", {I}'  # the scrape job of vLLM's metrics: a variable, since yours may differ
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def _target(query: Query, ref_id: str) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(query.expr).ref_id(ref_id).datasource(DATASOURCE)
    return target.legend_format(query.legend or "__auto")


def graph(
    title: str, queries: Sequence[Query], unit: str = "short", description: str = "", width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description or PANEL_HELP[title])
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for ref_id, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(_target(query, ref_id))
    return panel


def single(
    title: str, query: Query, unit: str = "short", description: str = "", width: int = 4
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description or PANEL_HELP[title])
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .with_target(_target(query, "A"))
    )


def quantile(metric: str, by: str = "", phi: float = 0.95, selector: str = I) -> str:
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({phi}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def rate(metric: str, by: str = "", selector: str = I) -> str:
    inner = f"rate({metric}{{{selector}}}[{RATE}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


Section = tuple[str, list[timeseries.Panel | stat.Panel]]


def _events(name: str, color: str, expr: str) -> dashboard_builder.AnnotationQuery:
    """A marker on every panel wherever `expr` (a count of events in the last 2 minutes) is above 0."""
    return (
        dashboard_builder.AnnotationQuery()
        .name(name)
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color(color)
        .expr(f"{expr} > 0")
    )


def _increase(metric: str, by: str, selector: str = "") -> str:
    matchers = f"{I}, {selector}" if selector else I
    return f"sum by ({by}) (increase({metric}{{{matchers}}}[2m]))"


# What changed in the loop, marked on the time axis of every panel: the moments to compare against.
ANNOTATIONS: list[Builder[AnnotationQuery]] = [
    _events("Swaps", "blue", _increase("evolvd_adapter_swaps_total", "action", 'outcome="ok"')),
    _events(
        "Rejected swaps", "orange", _increase("evolvd_adapter_swaps_total", "action", 'outcome="rejected"')
    ),
    _events("Promotion decisions", "green", _increase("evolvd_promotion_decisions_total", "outcome")),
    _events("Rollbacks", "red", _increase("evolvd_adapter_rollbacks_total", "outcome")),
]


def dashboard(uid: str, title: str, description: str, sections: Sequence[Section]) -> dict[str, object]:
    board = (
        dashboard_builder.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["evolvd"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)  # one time, marked on every panel at once
        .with_variable(
            dashboard_builder.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dashboard_builder.QueryVariable("instance")
            .label("evolvd")
            .datasource(DATASOURCE)
            .query("label_values(evolvd_build_info, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .include_all(True)
            .all_value(".*")
            .multi(True)
        )
        .with_variable(
            dashboard_builder.TextBoxVariable("vllm_job")
            .label("vLLM scrape job")
            .default_value("evolvd-vllm")
            .description("The Prometheus job that scrapes vLLM's metrics (evolvd's /serving/metrics).")
        )
        .annotations(ANNOTATIONS)
        .link(
            dashboard_builder.DashboardLink("evolvd")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(["evolvd"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for row_title, panels in sections:
        board = board.with_row(dashboard_builder.Row(row_title))
        for panel in panels:
            board = board.with_panel(panel)
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


# -- the dashboards -------------------------------------------------------------------------------


def overview() -> dict[str, object]:
    return dashboard(
        "evolvd-overview",
        "evolvd / Overview",
        "The whole loop at a glance: traffic in, labels, training, evaluation, promotion and serving.",
        [
            (
                "Now",
                [
                    single(
                        "Live adapter",
                        q(f"max by (adapter) (evolvd_live_adapter_info{{{I}}})", "{{adapter}}"),
                        description="What the public model name resolves to (the label; the value is 1).",
                    ),
                    single("Serving up", q(f"min(evolvd_serving_up{{{I}}})"), "bool_yes_no"),
                    single("Consumer lag", q(f"sum(evolvd_ingest_lag_messages{{{I}}})"), "short"),
                    single("Waiting for labels", q(f"sum(evolvd_buffer_backlog_events{{{I}}})"), "short"),
                    single(
                        "Drift guard",
                        q(f"max(evolvd_drift_guard_tripped{{{I}}})"),
                        "bool_on_off",
                        "On: recent prompts moved far from the reference; training is blocked.",
                    ),
                    single(
                        "Data disk free",
                        q(f"min(evolvd_data_dir_free_bytes{{{I}}} / evolvd_data_dir_size_bytes{{{I}}})"),
                        "percentunit",
                    ),
                ],
            ),
            (
                "The loop",
                [
                    graph(
                        "Pipeline throughput",
                        [
                            q(
                                rate("evolvd_ingest_messages_total", selector=f'{I}, outcome="event"'),
                                "ingested",
                            ),
                            q(rate("evolvd_labels_total"), "labeled"),
                            q(rate("evolvd_training_examples_total"), "training examples"),
                        ],
                        "ops",
                        "Events per second through each stage.",
                    ),
                    graph(
                        "Adapters: decisions and swaps (per hour)",
                        [
                            q(f"sum by (outcome) (increase(evolvd_promotion_decisions_total{{{I}}}[1h]))"),
                            q(
                                f'sum(increase(evolvd_adapter_rollbacks_total{{{I}, outcome="ok"}}[1h]))',
                                "rollbacks",
                            ),
                        ],
                        "short",
                    ),
                    graph(
                        "Held-out score: candidate vs live",
                        [q(f'max by (role) (evolvd_evaluation_score{{{I}, suite="heldout"}})', "{{role}}")],
                        "percentunit",
                        "Last evaluation: held-out accuracy of the candidate and of the live adapter.",
                    ),
                    graph(
                        "Training runs (per hour)",
                        [q(f"sum by (outcome) (increase(evolvd_training_runs_total{{{I}}}[1h]))")],
                    ),
                ],
            ),
        ],
    )


def ingest() -> dict[str, object]:
    return dashboard(
        "evolvd-ingest",
        "evolvd / Ingest",
        "Kafka to the DuckDB buffer: rate, lag, dead letters, backpressure and the buffer itself.",
        [
            (
                "Kafka",
                [
                    graph("Messages by outcome", [q(rate("evolvd_ingest_messages_total", "outcome"))], "ops"),
                    graph(
                        "Lag per partition",
                        [
                            q(
                                f"sum by (topic, partition) (evolvd_ingest_lag_messages{{{I}}})",
                                "{{topic}}[{{partition}}]",
                            )
                        ],
                    ),
                    graph(
                        "Dead letters by reason (per minute)",
                        [q(f"sum by (reason) (rate(evolvd_dead_letters_total{{{I}}}[{RATE}])) * 60")],
                        "short",
                        "Messages failing the contract; `evolvd status` lists them with their offsets.",
                    ),
                    graph(
                        "Backpressure",
                        [
                            q(f"max(evolvd_ingest_paused{{{I}}})", "paused"),
                            q(
                                f"sum(increase(evolvd_ingest_backpressure_pauses_total{{{I}}}[1h]))",
                                "pauses/h",
                            ),
                        ],
                    ),
                ],
            ),
            (
                "Buffer",
                [
                    graph(
                        "Batch write latency",
                        [
                            q(quantile("evolvd_ingest_batch_write_seconds", phi=0.5), "p50"),
                            q(quantile("evolvd_ingest_batch_write_seconds", phi=0.99), "p99"),
                        ],
                        "s",
                    ),
                    graph(
                        "Write errors, batches and restarts",
                        [
                            q(rate("evolvd_ingest_write_errors_total"), "write errors/s"),
                            q(rate("evolvd_ingest_batches_total"), "batches/s"),
                            q(rate("evolvd_ingest_restarts_total"), "ingest restarts/s"),
                        ],
                        "ops",
                    ),
                    graph(
                        "Writer stalled on a batch (the buffer refuses every write)",
                        [q(f"max(evolvd_ingest_writer_failing_seconds{{{I}}})", "failing for")],
                        "s",
                    ),
                    graph("Rows per table", [q(f"sum by (table) (evolvd_buffer_rows{{{I}}})", "{{table}}")]),
                    graph(
                        "Buffer file and free disk",
                        [
                            q(f"max(evolvd_buffer_file_bytes{{{I}}})", "buffer file"),
                            q(f"min(evolvd_data_dir_free_bytes{{{I}}})", "free on the data dir"),
                        ],
                        "bytes",
                    ),
                ],
            ),
        ],
    )


def labeling() -> dict[str, object]:
    return dashboard(
        "evolvd-labeling",
        "evolvd / Labeling",
        "Self-consistency votes, self-critique, self-refinement and preference pairs.",
        [
            (
                "Throughput",
                [
                    graph(
                        "Labels and samples per second",
                        [
                            q(rate("evolvd_labels_total"), "labels"),
                            q(rate("evolvd_label_samples_total"), "sampled answers"),
                            q(rate("evolvd_label_errors_total"), "errors"),
                        ],
                        "ops",
                    ),
                    graph(
                        "Backlog",
                        [q(f"sum(evolvd_buffer_backlog_events{{{I}}})", "events waiting")],
                    ),
                ],
            ),
            (
                "Quality",
                [
                    graph(
                        "Label confidence (winning vote share)",
                        [
                            q(quantile("evolvd_label_confidence", phi=0.5), "median"),
                            q(quantile("evolvd_label_confidence", phi=0.1), "p10"),
                        ],
                        "percentunit",
                    ),
                    graph(
                        "Extraction failures by answer kind",
                        [q(rate("evolvd_label_extraction_failures_total", "kind"))],
                        "ops",
                    ),
                    graph(
                        "Self-critique scores by parse status",
                        [q(rate("evolvd_critique_scores_total", "status"))],
                        "ops",
                    ),
                    graph(
                        "Refinement accept rate",
                        [
                            q(
                                f'sum(rate(evolvd_refinements_total{{{I}, outcome="accepted"}}[{RATE}]))'
                                f" / sum(rate(evolvd_refinements_total{{{I}}}[{RATE}]))",
                                "accepted share",
                            )
                        ],
                        "percentunit",
                    ),
                    graph(
                        "Preference pairs and training examples",
                        [
                            q(rate("evolvd_preference_pairs_total"), "pairs"),
                            q(rate("evolvd_training_examples_total"), "examples"),
                        ],
                        "ops",
                    ),
                ],
            ),
        ],
    )


def policies() -> dict[str, object]:
    return dashboard(
        "evolvd-policies",
        "evolvd / Policies and drift",
        "What the safety, drift, training and promotion policies decided, and the drift statistics.",
        [
            (
                "Decisions",
                [
                    graph(
                        "Decisions by policy and outcome (per hour)",
                        [
                            q(
                                "sum by (policy, outcome) "
                                f"(increase(evolvd_policy_decisions_total{{{I}}}[1h]))",
                                "{{policy}} {{outcome}}",
                            )
                        ],
                    ),
                    graph(
                        "Policy files",
                        [
                            q(
                                f"sum by (outcome) (increase(evolvd_policy_reloads_total{{{I}}}[1h]))",
                                "{{outcome}}/h",
                            ),
                            q(f"max(evolvd_policy_rejected{{{I}}})", "on-disk files rejected"),
                            q(
                                "sum by (check) (increase(evolvd_policy_evaluation_errors_total"
                                f"{{{I}}}[1h]))",
                                "{{check}} errors/h",
                            ),
                        ],
                    ),
                    graph(
                        "Policy in force (by content hash)",
                        [q(f"max by (policy, hash) (evolvd_policy_info{{{I}}})", "{{policy}} {{hash}}")],
                        description="A new line starts at each applied edit.",
                    ),
                ],
            ),
            (
                "Drift",
                [
                    graph(
                        "Embedding drift",
                        [
                            q(f"max(evolvd_drift_mmd2{{{I}}})", "MMD²"),
                            q(f"min(evolvd_drift_p_value{{{I}}})", "p-value"),
                        ],
                    ),
                    graph(
                        "Drift roles",
                        [
                            q(f"max(evolvd_drift_guard_tripped{{{I}}})", "guard (blocks training)"),
                            q(f"max(evolvd_drift_trigger_fired{{{I}}})", "trigger (trains sooner)"),
                        ],
                    ),
                    graph(
                        "Feature drift p-values",
                        [q(f"min by (feature) (evolvd_feature_drift_p_value{{{I}}})", "{{feature}}")],
                    ),
                ],
            ),
        ],
    )


def training() -> dict[str, object]:
    return dashboard(
        "evolvd-training",
        "evolvd / Training and evaluation",
        "Training runs (TRL + PEFT in a child process), candidate evaluations, promotion and the jobs.",
        [
            (
                "Training",
                [
                    graph(
                        "Runs by outcome (per hour)",
                        [q(f"sum by (outcome) (increase(evolvd_training_runs_total{{{I}}}[1h]))")],
                    ),
                    graph(
                        "Run duration",
                        [
                            q(quantile("evolvd_training_run_seconds", phi=0.5), "p50"),
                            q(quantile("evolvd_training_run_seconds", phi=0.95), "p95"),
                            q(f"max(evolvd_training_running{{{I}}})", "running now"),
                        ],
                        "s",
                    ),
                    graph(
                        "Loss by phase",
                        [q(f"max by (phase) (evolvd_training_loss{{{I}}})", "{{phase}}")],
                        description="Reported by the trainer child as it logs.",
                    ),
                    graph(
                        "Optimizer steps and data sets",
                        [
                            q(rate("evolvd_training_steps_total", "phase"), "{{phase}} steps/s"),
                            q(f"sum(increase(evolvd_training_datasets_total{{{I}}}[1h]))", "data sets/h"),
                        ],
                    ),
                ],
            ),
            (
                "Evaluation and promotion",
                [
                    graph(
                        "Last evaluation by suite",
                        [q(f"max by (suite, role) (evolvd_evaluation_score{{{I}}})", "{{suite}} {{role}}")],
                    ),
                    graph(
                        "Evaluations and promotion decisions (per hour)",
                        [
                            q(
                                f"sum by (outcome) (increase(evolvd_evaluations_total{{{I}}}[1h]))",
                                "evaluation {{outcome}}",
                            ),
                            q(
                                f"sum by (outcome) (increase(evolvd_promotion_decisions_total{{{I}}}[1h]))",
                                "promotion {{outcome}}",
                            ),
                        ],
                    ),
                    graph("Canary taking traffic", [q(f"max(evolvd_canary_active{{{I}}})", "canary")]),
                ],
            ),
            (
                "Jobs",
                [
                    graph(
                        "Job runs by outcome (per hour)",
                        [
                            q(
                                f"sum by (loop_job, outcome) (increase(evolvd_job_runs_total{{{I}}}[1h]))",
                                "{{loop_job}} {{outcome}}",
                            )
                        ],
                    ),
                    graph(
                        "Job duration p95",
                        [q(quantile("evolvd_job_seconds", "loop_job"), "{{loop_job}}")],
                        "s",
                    ),
                    graph(
                        "Paused jobs", [q(f"max by (loop_job) (evolvd_job_paused{{{I}}})", "{{loop_job}}")]
                    ),
                ],
            ),
        ],
    )


def serving() -> dict[str, object]:
    return dashboard(
        "evolvd-serving",
        "evolvd / Serving",
        "The vLLM process, adapter swaps and rollbacks, and the gateway clients talk to.",
        [
            (
                "Serving process",
                [
                    graph(
                        "Up and restarts",
                        [
                            q(f"min(evolvd_serving_up{{{I}}})", "up"),
                            q(f"sum(increase(evolvd_serving_restarts_total{{{I}}}[1h]))", "restarts/h"),
                        ],
                    ),
                    graph(
                        "vLLM requests",
                        [
                            q(f"sum(vllm:num_requests_running{{{VLLM}}})", "running"),
                            q(f"sum(vllm:num_requests_waiting{{{VLLM}}})", "waiting"),
                        ],
                        description="From vLLM's own metrics, scraped through evolvd's /serving/metrics.",
                    ),
                    graph(
                        "vLLM tokens per second",
                        [
                            q(f"sum(rate(vllm:generation_tokens_total{{{VLLM}}}[{RATE}]))", "generated"),
                            q(f"sum(rate(vllm:prompt_tokens_total{{{VLLM}}}[{RATE}]))", "prompt"),
                        ],
                        "ops",
                    ),
                    graph(
                        "vLLM time to first token p95 and KV cache use",
                        [
                            q(quantile("vllm:time_to_first_token_seconds", selector=VLLM), "TTFT p95 (s)"),
                            q(f"max(vllm:kv_cache_usage_perc{{{VLLM}}})", "KV cache used (share)"),
                        ],
                    ),
                ],
            ),
            (
                "Adapters",
                [
                    graph(
                        "Swaps by action and outcome (per hour)",
                        [
                            q(
                                f"sum by (action, outcome) (increase(evolvd_adapter_swaps_total{{{I}}}[1h]))",
                                "{{action}} {{outcome}}",
                            )
                        ],
                    ),
                    graph(
                        "Swap latency (load to alias flip)",
                        [
                            q(quantile("evolvd_adapter_swap_seconds", phi=0.5), "p50"),
                            q(quantile("evolvd_adapter_swap_seconds", phi=0.95), "p95"),
                        ],
                        "s",
                    ),
                    graph(
                        "Rollbacks by outcome (per hour)",
                        [q(f"sum by (outcome) (increase(evolvd_adapter_rollbacks_total{{{I}}}[1h]))")],
                    ),
                ],
            ),
            (
                "Gateway",
                [
                    graph(
                        "Requests by route and status",
                        [q(rate("evolvd_gateway_requests_total", "route, status"), "{{route}} {{status}}")],
                        "reqps",
                    ),
                    graph(
                        "Latency p50 / p95 by route",
                        [
                            q(quantile("evolvd_gateway_request_seconds", "route", 0.5), "{{route}} p50"),
                            q(quantile("evolvd_gateway_request_seconds", "route", 0.95), "{{route}} p95"),
                        ],
                        "s",
                    ),
                    graph(
                        "Error ratio (5xx)",
                        [
                            q(
                                # `or vector(0)`: no 5xx series at all is a ratio of 0, not "no data".
                                f'(sum(rate(evolvd_gateway_requests_total{{{I}, status=~"5.."}}[{RATE}]))'
                                " or vector(0))"
                                f" / sum(rate(evolvd_gateway_requests_total{{{I}}}[{RATE}]))",
                                "5xx share",
                            )
                        ],
                        "percentunit",
                    ),
                ],
            ),
        ],
    )


DASHBOARDS: dict[str, Callable[[], dict[str, object]]] = {
    "overview": overview,
    "ingest": ingest,
    "labeling": labeling,
    "policies": policies,
    "training": training,
    "serving": serving,
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON is not up to date")
    args = parser.parse_args(argv)
    stale = []
    OUT_DIR.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        path = OUT_DIR / f"{name}.json"
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.name))
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python grafana/dashboards.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
