"""The `evolvd` command: a thin layer over plain functions. Heavy imports happen inside commands,
so `evolvd --help` and `evolvd config check` start fast.

Exit codes: 0 ok · 1 failed · 2 bad usage or invalid file · 3 the daemon could not start ·
4 the daemon could not be reached · 130 forced stop (second Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from pydantic import BaseModel

    from evolvd.status_models import GatewayMemberStatus, IngestStatus, LoopStatus, PolicyStatus

    Answer = TypeVar("Answer", bound=BaseModel)

EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_STARTUP_FAILED = 3
EXIT_UNREACHABLE = 4
EXIT_FORCED = 130

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="EVOLVD_CONFIG",
    default=None,
    show_envvar=True,
    help="Config file (YAML). Without it: built-in defaults + EVOLVD_* env.",
)


JSON_MODE = "evolvd.json"


def _json_mode(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[JSON_MODE] = True  # meta is shared by the whole command line: fail() sees it
    return value


JSON_OPTION = click.option(
    "--json",
    "as_json",
    is_flag=True,
    is_eager=True,
    callback=_json_mode,
    help="Print JSON on stdout; errors as JSON on stderr.",
)


def json_mode() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(JSON_MODE))


def fail(code: int, *errors: str) -> NoReturn:
    """Report `errors` on stderr (`error: ...` lines, or one {"errors": [...], "exit_code": N} object
    with --json) and exit with `code`."""
    if json_mode():
        click.echo(json.dumps({"errors": list(errors), "exit_code": code}), err=True)
    else:
        for error in errors:
            click.echo(f"error: {error}", err=True)
    sys.exit(code)


def emit(data: Any, *lines: str) -> None:
    """`data` (a mapping or one of the admin API's answer models) as JSON with --json, else the
    human-readable `lines`."""
    if json_mode():
        if hasattr(data, "model_dump"):
            data = data.model_dump(mode="json", by_alias=True)
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for line in lines:
            click.echo(line)


def _load_config(config_path: Path | None) -> Any:
    from evolvd.config_file import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(EXIT_INVALID, *(str(err) for err in exc.errors))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="evolvd")
def main() -> None:
    """evolvd: make a served LLM improve from its own traffic, safely."""


# -- run --------------------------------------------------------------------------------------


@main.command()
@CONFIG_OPTION
@click.option(
    "--demo",
    is_flag=True,
    help="Feed the built-in demo workload (demo.*) and, unless policies.dir is set, use the "
    "demo-sized policies, so the whole loop runs on one machine within minutes.",
)
@click.option(
    "--role",
    type=click.Choice(["all", "ingest", "label", "loop", "gateway"]),
    default=None,
    help="What this process runs (default: the config's `role`, all): `ingest` consumes the prompts "
    "topic into a shared buffer (buffer.backend postgres) as one member of the consumer group; `label` "
    "labels the shared buffer's pending events with the model at serving.url; `loop` campaigns to run "
    "the loop's jobs (one member is elected, the others stand by); `gateway` serves the public model "
    "name in front of serving.url, routed as the shared buffer says (several run behind a load balancer).",
)
def run(config_path: Path | None, demo: bool, role: str | None) -> None:
    """Run the daemon until SIGTERM or Ctrl-C (a second Ctrl-C forces the exit)."""
    config = _load_config(config_path)
    if role is not None:
        config = config.model_copy(update={"role": role})
    if demo:
        from evolvd.policies.loader import demo_dir

        policies = (
            config.policies
            if config.policies.dir is not None
            else config.policies.model_copy(
                update={"dir": demo_dir(), "watch": False}  # the shipped files do not change
            )
        )
        demo_on = config.demo.model_copy(update={"enabled": True})
        config = config.model_copy(update={"demo": demo_on, "policies": policies})
    from evolvd.app import GIL_SWITCH_INTERVAL_S, Daemon, StartupError
    from evolvd.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # process-wide: this process is the daemon
    try:
        daemon = Daemon(config)  # builds every part: the buffer opens, the policies load
    except StartupError as exc:
        click.echo(f"evolvd: startup failed: {exc}", err=True)
        sys.exit(EXIT_STARTUP_FAILED)
    interrupts = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                click.echo("evolvd: second interrupt, exiting now", err=True)
                os._exit(EXIT_FORCED)  # the buffer is transactional: an unfinished batch is simply re-read
        daemon.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.getLogger("evolvd").info("starting: Ctrl-C or SIGTERM stops, a second Ctrl-C exits at once")
    try:
        daemon.startup()
    except StartupError as exc:
        click.echo(f"evolvd: startup failed: {exc}", err=True)
        daemon.shutdown()
        sys.exit(EXIT_STARTUP_FAILED)
    try:
        daemon.run()
    finally:
        daemon.shutdown()


# -- status -----------------------------------------------------------------------------------


def _admin_url(url: str | None, config: Any) -> str:
    if url:
        return url.rstrip("/")
    from evolvd.app import data_dir_admin_url

    written = data_dir_admin_url(config.data_dir)
    if written:
        return written
    return f"http://{config.admin.host}:{config.admin.port}"


def admin_answer(
    answer: type[Answer],
    url: str | None,
    config_path: Path | None,
    path: str,
    method: str = "GET",
    body: Any = None,
) -> Answer:
    """The admin API's answer read as its model (evolvd.status_models); exits with what differs when a
    daemon of another version answers in another shape."""
    from pydantic import ValidationError

    raw = _admin_json(url, config_path, path, method, body)
    try:
        return answer.model_validate(raw)
    except ValidationError as exc:
        fail(EXIT_FAILED, f"the daemon's answer to {method} {path} is not what this evolvd expects: {exc}")


def _admin_json(
    url: str | None, config_path: Path | None, path: str, method: str = "GET", body: Any = None
) -> dict[str, Any]:
    """Call the running daemon's admin API; print the daemon's own reason and exit on an error."""
    import httpx

    from evolvd.admin_client import admin_call
    from evolvd.admin_token import GENERATED_TOKEN_FILE, AdminTokenError, client_token

    config = _load_config(config_path)
    base = _admin_url(url, config)
    try:
        token = client_token(config)
    except AdminTokenError as exc:
        fail(EXIT_FAILED, str(exc))
    try:
        response = admin_call(base, method, path, body, token)
    except httpx.HTTPError as exc:
        fail(EXIT_UNREACHABLE, f"cannot reach the evolvd admin API at {base}: {exc}")
    if response.status_code == 401:
        fail(
            EXIT_FAILED,
            f"{base} refused the bearer token: set ${config.admin.token_env} (or admin.token_file)"
            f" to the daemon's, or run as the user that can read {config.data_dir / GENERATED_TOKEN_FILE}",
        )
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if isinstance(detail, dict) and "errors" in detail:  # a file the daemon found invalid
            fail(EXIT_INVALID, *(str(line) for line in detail["errors"]))
        fail(EXIT_FAILED, str(detail))
    result: dict[str, Any] = response.json()
    return result


URL_OPTION = click.option(
    "--url",
    envvar="EVOLVD_ADMIN_URL",
    show_envvar=True,
    default=None,
    help="Admin API base URL (default: what the daemon wrote into its data_dir).",
)


@main.command()
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def status(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Show what the running daemon is doing (read through its admin API)."""
    from evolvd.status_models import DaemonStatus

    body = admin_answer(DaemonStatus, url, config_path, "/status")
    if as_json:
        emit(body)
        return
    buf, dead = body.buffer, body.dead_letters
    click.echo(f"evolvd {body.version}  state={body.state}  pid={body.pid}  up {body.uptime_s}s")
    if body.kafka is not None:
        kafka = body.kafka
        click.echo(
            f"kafka    {kafka.bootstrap_servers}{' (embedded, in-memory)' if kafka.embedded else ''}"
            f"  topic={kafka.topic}  group={kafka.group_id}"
        )
    if body.ingest is not None:
        _echo_ingest(body.ingest)
    if body.labeling is not None:
        labeling = body.labeling
        failed = (
            f"  rounds failed {labeling.rounds_failed}: {labeling.last_error}"
            if labeling.rounds_failed
            else ""
        )
        click.echo(
            f"labeler  {labeling.claimant}  model={labeling.model or '-'}  running={labeling.running}"
            f"  labeled={labeling.labeled}{failed}"
        )
    serving = body.serving
    if body.gateway is not None:  # a gateway member runs no serving of its own
        _echo_gateway_member(body.gateway)
    elif serving.state == "disabled":
        click.echo("serving  disabled")
    else:
        click.echo(f"serving  {serving.state}  {serving.url}  restarts={serving.restarts}")
        canary = f"  canary={serving.canary}" if serving.canary else ""
        click.echo(
            f"  {serving.public_model_name!r} -> {serving.live}  (rollback to {serving.previous or '-'})"
            f"{canary}  gateway {serving.gateway_url}/v1"
        )
    _echo_policies(body.policies)
    _echo_loop(body.loop)
    click.echo(f"buffer   {buf.path} (schema v{buf.schema_version})")
    rows = "  ".join(f"{k}={v}" for k, v in buf.tables.items() if v)
    click.echo(f"  {rows or 'empty'}")
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(dead.by_reason.items()))
    click.echo(f"dead letters {dead.total}" + (f": {reasons}" if dead.total else ""))


def _echo_gateway_member(gateway: GatewayMemberStatus) -> None:
    upstream = "up" if gateway.upstream_ok else "DOWN"
    click.echo(f"gateway  member {gateway.member}  {gateway.url}/v1 -> {gateway.upstream} ({upstream})")
    if gateway.routing_generation is None:
        click.echo("  no routing published yet: requests get 503")
        return
    canary = f"  canary={gateway.canary} ({gateway.canary_share:.0%})" if gateway.canary else ""
    read = f"read {gateway.routing_read_age_s}s ago"
    if gateway.routing_read_error:
        read = f"BUFFER UNREADABLE ({gateway.routing_read_error}); last {read}"
    click.echo(
        f"  {gateway.public_model_name!r} -> {gateway.live}{canary}"
        f"  (routing generation {gateway.routing_generation}, {read})"
    )


def _echo_ingest(ingest: IngestStatus) -> None:
    paused = "  PAUSED (backpressure)" if ingest.paused_by_backpressure else ""
    click.echo(
        f"ingest   running={ingest.running}  backlog={ingest.backlog}"
        f"/{ingest.backlog_high_watermark}  lag={ingest.lag_total}{paused}"
    )
    writer = ingest.writer
    if writer.failing_s:
        stalled = f"{writer.failing_s}s ({writer.attempts} attempts)"
        click.echo(f"  WRITER STALLED for {stalled}: {writer.last_error}")
    for a in ingest.group_ahead:
        click.echo(
            f"  GROUP AHEAD OF BUFFER on partition {a.partition}: group at {a.group_offset},"
            f" buffer at {a.buffer_offset} (another daemon with its own buffer in this group?)"
        )
    for p in ingest.partitions:
        at, end, lag = (v if v is not None else "-" for v in (p.buffer_offset, p.highwater, p.lag))
        click.echo(f"  partition {p.partition}: buffer at {at}, end {end}, lag {lag}")


def _echo_policies(policies: PolicyStatus | None) -> None:
    if policies is None:
        return
    hashes = "  ".join(
        f"{name}={p.hash}{'*' if p.source != '<default>' else ''}" for name, p in policies.in_force.items()
    )
    click.echo(f"policies {policies.directory or 'shipped defaults'}  {hashes}  (* = operator's file)")
    for line in policies.rejected:
        click.echo(f"  REJECTED EDIT (previous policy in force): {line}")
    for lines in policies.weaker_than_shipped.values():
        for line in lines:
            click.echo(f"  WEAKER THAN SHIPPED: {line}")
    report = policies.drift.report
    if report is None:
        click.echo(f"  drift: {policies.drift.note}")
    else:
        state = (
            "GUARD TRIPPED"
            if report.guard_tripped
            else ("trigger fired" if report.trigger_fired else "no significant drift")
        )
        click.echo(
            f"  drift: {state} (MMD^2 {report.mmd.mmd2:.4f}, p={report.mmd.p_value:.4f}"
            f" vs {report.reference_kind})"
        )
    gate = policies.training_gate
    if gate is not None:
        click.echo(f"  training gate: {gate.outcome}")
        for reason in gate.reasons:
            click.echo(f"    - {reason}")


def _run_progress(status: str, metrics: dict[str, Any]) -> str:
    """`, sft step 12/30, loss 0.84` for a run in flight; its loss once it is done."""
    if status == "running" and "step" in metrics:
        step = f"{metrics['step']}/{metrics['max_steps']}"
        return f", {metrics['phase']} step {step}, loss {metrics['loss']:.3f}"
    if "sft_loss" in metrics:
        return f", sft loss {metrics['sft_loss']:.3f}"
    return ""


def _echo_loop(loop: LoopStatus | None) -> None:
    """The loop, step by step: each job's last outcome, then runs, evaluations and decisions."""
    if loop is None:
        return
    click.echo("loop")
    lead = loop.leadership
    if lead.role != "sole":
        error = f"; last database error: {lead.error}" if lead.error else ""
        term = f"term {lead.token}, led by {lead.leader}; this member {lead.member}"
        click.echo(f"  {lead.role} ({term}){error}")
    for job in loop.jobs:
        state = "PAUSED" if job.paused else ("running" if job.running else "scheduled")
        said = f"{job.last.outcome}: {job.last.detail}" if job.last else "not run yet"
        click.echo(f"  {job.job:<11} {state:<9} {said}")
    for run in loop.runs[:3]:
        reason = f" ({run.reason})" if run.reason else ""
        made = f" -> {run.adapter_name}" if run.adapter_name else ""
        progress = _run_progress(run.status, run.metrics or {})
        click.echo(f"  run {run.run_id} attempt {run.attempt}: {run.status}{made}{reason}{progress}")
    for ev in loop.evaluations[:3]:
        score = "-" if ev.score is None else f"{ev.score:.3f}"
        base = "-" if ev.baseline_score is None else f"{ev.baseline_score:.3f}"
        p_value = "-" if ev.p_value is None else f"{ev.p_value:.4f}"
        click.echo(
            f"  evaluated {ev.adapter_name}: held-out {score} vs {base} ({ev.baseline_name}), p={p_value}"
        )
    for d in loop.promotion_decisions[:3]:
        reasons = "; ".join(d.reasons)
        click.echo(f"  promotion {d.adapter}: {d.outcome}{' - ' + reasons if reasons else ''}")
    for c in loop.canaries[:1]:
        why = f" - {c.reason}" if c.reason else ""
        click.echo(f"  canary {c.adapter_name} ({c.share:.0%}): {c.outcome or 'running'}{why}")


# -- model and adapters -----------------------------------------------------------------------


@main.group()
def model() -> None:
    """The base model."""


@model.command("init")
@CONFIG_OPTION
@JSON_OPTION
def model_init(config_path: Path | None, as_json: bool) -> None:
    """Convert the bundled base model into data_dir/models once (idempotent; verified by content hash)."""
    config = _load_config(config_path)
    from evolvd.connectors.model_bootstrap import ModelBootstrapError, resolve_base_model
    from evolvd.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format)
    try:
        base = resolve_base_model(config.serving.model_path, config.data_dir / "models")
    except ModelBootstrapError as exc:
        fail(EXIT_FAILED, str(exc))
    emit(
        {"name": base.name, "path": str(base.path), "sha256": base.content_hash},
        f"{base.name}: {base.path} (sha256 {base.content_hash})",
    )


@main.group()
def adapters() -> None:
    """LoRA adapters: list, register, promote (through the running daemon)."""


@adapters.command("list")
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def adapters_list(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Every adapter with its status, and the latest swaps."""
    from evolvd.status_models import AdapterList

    body = admin_answer(AdapterList, url, config_path, "/adapters")
    if as_json:
        emit(body)
        return
    for a in body.adapters:
        click.echo(f"{a.name:<48} v{a.version:<4} {a.status:<12} {a.reason or ''}")
    if body.swaps:
        click.echo("recent swaps:")
        for s in body.swaps[:10]:
            ms = f"{s.duration_ms:.0f} ms" if s.duration_ms is not None else ""
            click.echo(
                f"  {s.created_at.isoformat()}  {s.action:<9} {s.outcome:<9} {s.from_ or 'base'} -> "
                f"{s.to or 'base'}  {ms}  {s.reason or ''}"
            )


@adapters.command("show")
@click.argument("name")
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def adapters_show(name: str, url: str | None, config_path: Path | None, as_json: bool) -> None:
    """NAME's lineage: run, data set, the Kafka offsets it learned from, evaluations, decisions, parents."""
    from evolvd.status_models import Lineage

    body = admin_answer(Lineage, url, config_path, f"/adapters/{name}")
    if as_json:
        emit(body)
        return
    for depth, node in enumerate([body.adapter, *body.ancestors]):
        pad = "  " * depth
        click.echo(f"{pad}{node.name}  v{node.version}  {node.status}  {node.reason or ''}")
        run, data = node.run, node.dataset
        if run is not None:
            click.echo(f"{pad}  run {run.run_id} ({run.kind}, attempt {run.attempt}): {run.status}")
            config = run.config or {}
            if tensorboard := config.get("tensorboard"):
                click.echo(f"{pad}  training metrics: tensorboard --logdir {tensorboard}")
            if isinstance(mlflow := config.get("mlflow"), dict):
                listed = mlflow.get("runs")
                runs = ", ".join(str(r) for r in listed) if isinstance(listed, list) else ""
                click.echo(
                    f"{pad}  MLflow: {mlflow['tracking_uri']}, experiment {mlflow['experiment']}, runs {runs}"
                )
        if data is not None:
            click.echo(
                f"{pad}  data set {data.dataset_id[:16]}: {data.n_examples} examples"
                f" ({data.n_replay} replay), {data.n_pairs} pairs"
            )
        for k in node.kafka_offsets:
            click.echo(
                f"{pad}  kafka {k.topic}[{k.partition}] offsets {k.first_offset}..{k.last_offset}"
                f" ({k.events} events)"
            )
        for ev in node.evaluations:
            score = "-" if ev.score is None else f"{ev.score:.3f}"
            base = "-" if ev.baseline_score is None else f"{ev.baseline_score:.3f}"
            click.echo(f"{pad}  eval {ev.suite:<12} {score} vs {base} ({ev.baseline_name})")
            for flip in _safety_flips(ev.details):
                click.echo(f"{pad}    {flip}")
        for d in node.decisions:
            click.echo(f"{pad}  {d.policy} decision: {d.outcome} {d.reasons}")
        if depth == 0 and node.parent:
            click.echo(f"{pad}  learned on top of:")


def _safety_flips(details: dict[str, Any] | None) -> list[str]:
    """The safety probes the candidate and the live model treated differently (evaluation details)."""
    flips = (details or {}).get("flips")
    lines = []
    for flip in flips if isinstance(flips, list) else []:
        said = "refused what live answered" if flip["candidate_refused"] else "answered what live refused"
        lines.append(f"{flip['probe_set']}: the candidate {said}: {flip['prompt'][:70]!r}")
    return lines


@adapters.command("register")
@click.argument("path", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--evaluate",
    is_flag=True,
    help="Let the loop evaluate it and the promotion policy decide, as for a trained candidate"
    " (without: it waits for your promote or canary).",
)
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def adapters_register(
    path: Path, evaluate: bool, url: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Copy an adapter folder into the daemon, validate it and add it as a candidate (prints its
    unique name)."""
    body = {"path": str(path.resolve()), "evaluate": evaluate}
    from evolvd.status_models import Registered

    result = admin_answer(Registered, url, config_path, "/adapters", "POST", body)
    emit(result, result.name)


@adapters.command("promote")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even an adapter the gates rejected or a canary rolled back (recorded in the swap log).",
)
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def adapters_promote(
    name: str, force: bool, url: str | None, config_path: Path | None, as_json: bool
) -> None:
    """Hot-swap NAME in as the live adapter (load, probe, flip; the previous stays loaded for rollback)."""
    from evolvd.status_models import SwapOutcome

    result = admin_answer(
        SwapOutcome, url, config_path, f"/adapters/{name}/promote", "POST", {"force": force}
    )
    old, new, took = result.from_adapter or "base", result.to_adapter, result.duration_ms
    emit(result, f"live: {old} -> {new} in {took:.0f} ms")


@adapters.command("canary")
@click.argument("name", required=False)
@click.option(
    "--share",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Share of alias traffic (default: gateway.canary_share).",
)
@click.option("--stop", is_flag=True, help="End the running canary instead.")
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def adapters_canary(
    name: str | None,
    share: float | None,
    stop: bool,
    url: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Send a share of the alias traffic to NAME (live keeps the rest); --stop ends the running canary
    (no NAME needed: there is one at most)."""
    from evolvd.status_models import SwapOutcome

    if stop:
        emit(admin_answer(SwapOutcome, url, config_path, "/canary", "DELETE"), "canary stopped")
        return
    if name is None:
        raise click.UsageError("NAME is required (or --stop to end the running canary)")
    emit(
        admin_answer(SwapOutcome, url, config_path, f"/adapters/{name}/canary", "POST", {"share": share}),
        f"canary: {name}",
    )


@main.command()
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def rollback(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Flip back to the previous adapter (or the base model)."""
    from evolvd.status_models import SwapOutcome

    result = admin_answer(SwapOutcome, url, config_path, "/rollback", "POST")
    emit(result, f"rolled back: {result.from_adapter} -> {result.to_adapter or 'base'}")


# -- scheduled jobs ---------------------------------------------------------------------------


@main.group()
def jobs() -> None:
    """The loop's scheduled jobs: list, pause, resume, run now."""


@jobs.command("list")
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def jobs_list(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Every job with its trigger, next run and last outcome."""
    from evolvd.status_models import JobList

    body = admin_answer(JobList, url, config_path, "/jobs")
    lines = []
    for job in body.jobs:
        state = "PAUSED" if job.paused else ("running" if job.running else "scheduled")
        said = f"{job.last.outcome}: {job.last.detail}" if job.last else "not run yet"
        next_run = job.next_run.isoformat() if job.next_run else None
        lines.append(f"{job.job:<11} {state:<9} {job.trigger or 'unscheduled'}  next {next_run}  {said}")
    emit(body, *lines)


def _job_action(action: str) -> click.Command:
    @click.command(action, help=f"{action.capitalize()} the job NAME.")
    @click.argument("name")
    @URL_OPTION
    @CONFIG_OPTION
    @JSON_OPTION
    def command(name: str, url: str | None, config_path: Path | None, as_json: bool) -> None:
        from evolvd.status_models import JobAction

        result = admin_answer(JobAction, url, config_path, f"/jobs/{name}/{action}", "POST")
        if action == "run" and not result.started:
            fail(EXIT_FAILED, result.reason or "not started")
        emit(result, f"{name}: {action} {'started' if action == 'run' else 'ok'}")

    return command


for _action in ("pause", "resume", "run"):
    jobs.add_command(_job_action(_action))


# -- config -----------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Validate and show configuration."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@JSON_OPTION
def config_check(file: Path, as_json: bool) -> None:
    """Validate FILE (with EVOLVD_* overrides applied); print every error with its place."""
    _load_config(file)
    emit({"file": str(file), "valid": True}, f"{file}: ok")


@config.command("show")
@CONFIG_OPTION
@JSON_OPTION
def config_show(config_path: Path | None, as_json: bool) -> None:
    """Print the effective configuration (defaults < file < environment) as YAML (or JSON)."""
    import yaml

    from evolvd.config import as_dict

    effective = as_dict(_load_config(config_path))
    emit(effective, yaml.safe_dump(effective, sort_keys=False).rstrip("\n"))


# -- policies ---------------------------------------------------------------------------------


@main.group()
def policy() -> None:
    """Check, dry-run and reload the policy files operators edit."""


def _check_policies(path: Path) -> Any:
    from evolvd.config_file import ConfigError
    from evolvd.policies.loader import check_policy_path

    try:
        return check_policy_path(path)
    except ConfigError as exc:
        fail(EXIT_INVALID, *(str(err) for err in exc.errors))


@policy.command("check")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@JSON_OPTION
def policy_check(path: Path, as_json: bool) -> None:
    """Validate a policy directory or one policy file, without a daemon."""
    described = _check_policies(path).describe()
    emit(described, *(f"{n}: ok  hash {d['hash']}  ({d['source']})" for n, d in described.items()))


@policy.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@JSON_OPTION
def policy_init(directory: Path, as_json: bool) -> None:
    """Write a copy of the shipped default policies into DIRECTORY, to edit and point policies.dir at."""
    import shutil

    from evolvd.policies.loader import defaults_dir

    if directory.exists() and any(directory.iterdir()):
        fail(EXIT_FAILED, f"{directory} is not empty; not overwriting anything")
    shutil.copytree(defaults_dir(), directory, dirs_exist_ok=True)
    written = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    emit(
        {"directory": str(directory), "files": written},
        f"wrote the default policies to {directory}; set policies.dir: {directory} in the config",
    )


@policy.command("dry-run")
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def policy_dry_run(path: Path, url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Evaluate an edited policy file (or directory) on the running daemon's buffer; applies nothing."""
    _check_policies(path)
    if path.is_dir():
        files = {
            str(p.relative_to(path)): p.read_text(encoding="utf-8")
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
    else:
        files = {path.name: path.read_text(encoding="utf-8")}
    from evolvd.status_models import DryRunReport

    body = admin_answer(
        DryRunReport,
        url,
        config_path,
        "/policies/dry-run",
        "POST",
        {"files": files, "replace_all": path.is_dir(), "shown_as": str(path)},
    )
    if as_json:
        emit(body)
        return
    changed = body.policies_changed
    click.echo(
        "changed policies: " + (", ".join(f"{n} -> {h}" for n, h in changed.items()) or "none (same values)")
    )
    examples = body.examples
    moves = ", ".join(f"{k}: {v}" for k, v in examples.transitions.items()) or "none"
    click.echo(f"examples whose safety outcome would change: {moves}")
    if examples.newly_quarantined:
        click.echo(f"  newly quarantined (first ids): {examples.newly_quarantined[:20]}")
    gate = body.training_gate
    for which, decision in (("current", gate.current), ("candidate", gate.candidate)):
        click.echo(f"training gate, {which} policy: {decision.outcome}")
        for reason in decision.reasons:
            click.echo(f"  - {reason}")
    click.echo("nothing was applied")


@policy.command("reload")
@URL_OPTION
@CONFIG_OPTION
@JSON_OPTION
def policy_reload(url: str | None, config_path: Path | None, as_json: bool) -> None:
    """Ask the daemon to re-read its policy directory now (it also watches it)."""
    from evolvd.status_models import PolicyReload

    body = admin_answer(PolicyReload, url, config_path, "/policies/reload", "POST")
    if body.rejected:
        fail(EXIT_INVALID, *body.rejected)
    emit(body, f"reload: {body.outcome}")


# -- produce ----------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.File("rb"))
@CONFIG_OPTION
@URL_OPTION
@click.option(
    "--bootstrap-servers",
    envvar="EVOLVD_KAFKA__BOOTSTRAP_SERVERS",
    default=None,
    help="Kafka to publish to (default: the config's; `embedded` asks the running daemon).",
)
@click.option("--topic", default=None, help="Topic (default: the config's kafka.topic).")
@JSON_OPTION
def produce(
    file: Any,
    config_path: Path | None,
    url: str | None,
    bootstrap_servers: str | None,
    topic: str | None,
    as_json: bool,
) -> None:
    """Publish each line of FILE (JSON Lines, one message each) to the prompts topic, as-is.

    Lines are not validated here: the daemon's contract check turns bad ones into dead letters,
    which is what a demo of that path needs.
    """
    from evolvd.connectors.kafka_publisher import publish_lines

    config = _load_config(config_path)
    servers = bootstrap_servers or config.kafka.bootstrap_servers
    if servers == "embedded":
        from evolvd.status_models import DaemonStatus

        kafka = admin_answer(DaemonStatus, url, config_path, "/status").kafka
        if kafka is None:
            raise click.ClickException(
                "the daemon at the admin URL runs no Kafka (a labeler): pass --bootstrap-servers"
            )
        servers = kafka.bootstrap_servers
    chosen = topic or config.kafka.topic
    sent = publish_lines(config.kafka, servers, chosen, file)
    emit(
        {"published": sent, "topic": chosen, "bootstrap_servers": servers},
        f"published {sent} messages to {chosen} at {servers}",
    )


if __name__ == "__main__":
    main()
