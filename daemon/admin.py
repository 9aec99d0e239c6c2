"""The admin HTTP API: health, readiness, status and metrics (and, as the loop grows, control).

/healthz and /readyz stay open for orchestrator probes; everything else needs the bearer token
(evolvd.admin_token: the operator's, or one generated into data_dir). AdminGuard (admin_guard.py)
checks the token, cross-site requests, the Host header and the body size before a route or a body
parser runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import httpx
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from evolvd.admin_guard import AdminGuard
from evolvd.config_file import ConfigError
from evolvd.connectors.vllm_client import VLLMError
from evolvd.serving.service import ServingNotStartedError, SwapError
from evolvd.status_models import (
    AdapterList,
    DaemonStatus,
    DryRunReport,
    JobAction,
    JobList,
    JobStatus,
    Lineage,
    PolicyReload,
    PolicyStatus,
    Registered,
    SwapOutcome,
)

logger = logging.getLogger("evolvd.admin")


class ServingControl(Protocol):
    """The serving operations the admin API exposes."""

    registry: Any

    def register(self, path: Path, evaluate: bool = False) -> str: ...
    def promote(self, name: str, force: bool = False) -> Any: ...
    def start_canary(self, name: str, share: float | None) -> Any: ...
    def stop_canary(self) -> Any: ...
    def rollback(self) -> Any: ...
    def vllm_metrics(self) -> str: ...


class PolicyControl(Protocol):
    """The policy operations the admin API exposes."""

    def status(self) -> PolicyStatus: ...
    def reload(self) -> str: ...
    def dry_run(self, files: dict[str, str], replace_all: bool, shown_as: str) -> dict[str, Any]: ...


class SchedulerControl(Protocol):
    """The scheduled jobs the admin API exposes."""

    def status(self) -> list[JobStatus]: ...
    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def run_now(self, name: str) -> JobAction: ...


class DaemonView(Protocol):
    """What the admin API needs from the daemon."""

    registry: CollectorRegistry

    @property
    def scheduler(self) -> SchedulerControl | None:
        """None on a daemon that runs no loop (`--role ingest`, `label`), or a loop member standing by."""

    def no_scheduler_reason(self) -> str:
        """Why `scheduler` is None."""

    def lineage(self, adapter: str) -> Lineage | None: ...

    @property
    def serving(self) -> ServingControl | None: ...

    @property
    def policies(self) -> PolicyControl | None:
        """None on a daemon that runs no policies (`--role ingest`)."""

    def status(self) -> DaemonStatus: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): reason says what is not ready, or 'ok'."""


class CanaryRequest(BaseModel):
    share: float | None = None
    """Share of alias traffic for the canary; default: gateway.canary_share."""


class DryRunRequest(BaseModel):
    files: dict[str, str]
    """File name (e.g. `training.yaml`, `probes/safety_benign.jsonl`) -> its edited text."""

    replace_all: bool = False
    """True: the files are a whole policy directory; False: they replace their namesakes only."""

    shown_as: str = "<upload>"
    """The operator's path, used in error messages."""


class PromoteRequest(BaseModel):
    force: bool = False
    """Promote an adapter the gates rejected or a canary rolled back (it skips every gate; audited)."""


class RegisterRequest(BaseModel):
    path: str
    """An adapter folder on the daemon's machine (adapter_config.json + adapter_model.safetensors)."""
    evaluate: bool = False
    """Put it through the loop's evaluation and the promotion policy, like a trained candidate."""


@contextmanager
def _serving_errors() -> Iterator[None]:
    """A refused swap is a conflict (409, with the reason); serving still starting is 503."""
    try:
        yield
    except SwapError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except ServingNotStartedError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc


def _swap(action: Callable[[], Any]) -> SwapOutcome:
    with _serving_errors():
        return SwapOutcome.model_validate(asdict(action()))


def create_app(daemon: DaemonView, token: str, loopback: bool = True) -> FastAPI:
    """The admin app. `loopback`: bound to a loopback address, so Host must name loopback."""
    if not token:
        raise ValueError("the admin API always has a token (evolvd.admin_token)")
    # /openapi.json is a route of its own below, behind the guard's token check like the rest.
    app = FastAPI(title="evolvd admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AdminGuard, token=token, loopback_only=loopback)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        ready, reason = daemon.readiness()
        if not ready:
            response.status_code = 503
        return {"ready": ready, "reason": reason}

    @app.get("/status")
    def status() -> DaemonStatus:
        return daemon.status()

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(daemon.registry), media_type=CONTENT_TYPE_LATEST)

    def serving() -> ServingControl:
        if daemon.serving is None:
            raise HTTPException(status_code=409, detail="serving is disabled (serving.enabled: false)")
        return daemon.serving

    @app.get("/adapters")
    def adapters() -> AdapterList:
        control = serving()
        return AdapterList.model_validate(
            {"adapters": control.registry.all(), "swaps": control.registry.swaps()}
        )

    @app.post("/adapters")
    def register(body: RegisterRequest) -> Registered:
        with _serving_errors():
            return Registered(name=serving().register(Path(body.path), body.evaluate))

    @app.post("/adapters/{name}/promote")
    def promote(name: str, body: PromoteRequest | None = None) -> SwapOutcome:
        force = body.force if body is not None else False
        return _swap(lambda: serving().promote(name, force))

    @app.post("/adapters/{name}/canary")
    def canary(name: str, body: CanaryRequest | None = None) -> SwapOutcome:
        return _swap(lambda: serving().start_canary(name, body.share if body else None))

    @app.delete("/canary")
    def stop_canary() -> SwapOutcome:
        return _swap(lambda: serving().stop_canary())

    @app.get("/serving/metrics")
    def vllm_metrics() -> Response:
        try:
            text = serving().vllm_metrics()
        except (VLLMError, httpx.HTTPError, ServingNotStartedError) as exc:
            raise HTTPException(
                status_code=503, detail=f"serving process metrics unavailable: {exc}"
            ) from exc
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    def policies() -> PolicyControl:
        if daemon.policies is None:
            raise HTTPException(
                status_code=409, detail="this daemon runs no policies (it is an ingest member)"
            )
        return daemon.policies

    @app.get("/policies")
    def policy_status() -> PolicyStatus:
        return policies().status()

    @app.post("/policies/reload")
    def policy_reload() -> PolicyReload:
        control = policies()
        outcome = control.reload()
        return PolicyReload(outcome=outcome, **control.status().model_dump())

    @app.post("/policies/dry-run")
    def policy_dry_run(body: DryRunRequest) -> DryRunReport:
        try:
            return DryRunReport.model_validate(
                policies().dry_run(body.files, body.replace_all, body.shown_as)
            )
        except ConfigError as exc:
            raise HTTPException(status_code=422, detail={"errors": [str(e) for e in exc.errors]}) from exc

    @app.post("/rollback")
    def rollback() -> SwapOutcome:
        return _swap(lambda: serving().rollback())

    _add_loop_routes(app, daemon)
    return app


def _add_loop_routes(app: FastAPI, daemon: DaemonView) -> None:
    """Lineage of an adapter and the scheduled jobs (pause, resume, run now)."""

    @app.get("/adapters/{name}")
    def adapter_lineage(name: str) -> Lineage:
        found = daemon.lineage(name)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no adapter named {name}")
        return found

    def scheduler() -> SchedulerControl:
        control = daemon.scheduler
        if control is None:
            raise HTTPException(status_code=409, detail=daemon.no_scheduler_reason())
        return control

    @app.get("/jobs")
    def jobs() -> JobList:
        return JobList(jobs=scheduler().status())

    @app.post("/jobs/{name}/{action}")
    def job_action(name: str, action: str) -> JobAction:
        control = scheduler()
        try:
            if action == "pause":
                control.pause(name)
            elif action == "resume":
                control.resume(name)
            elif action == "run":
                return control.run_now(name)
            else:
                raise HTTPException(
                    status_code=404, detail=f"unknown action {action!r}: pause, resume or run"
                )
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0])) from exc
        return JobAction(job=name, action=action)
