"""Where a training attempt runs (training.launcher): a child process on this node (`local`, or
`torchrun` ranks under evolvd.training.launch), or a job on a Ray cluster (`ray`, through Ray Jobs'
JobSubmissionClient, the cluster's own submission API).

Each gives the runner the same handle on the trainer: the lines it writes on stdout (the child's
progress protocol, evolvd.training.child), whether and how it ended, and a way to stop it. So a
cluster job is watched, timed out, stopped with the daemon and failed with its reason exactly like a
local child, and the training job retries it the same way."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Protocol

from evolvd.config import TrainingConfig

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

logger = logging.getLogger("evolvd.training")

RAY_POLL_S = 1.0
"""How often a Ray job's status and new log text are read."""
RAY_STOP_WAIT_S = 60.0
"""How long a stopped Ray job may take to report itself stopped."""


class Trainer(Protocol):
    """A running training attempt."""

    @property
    def pid(self) -> int | None:
        """The local trainer's PID (None for a cluster job)."""
        ...

    @property
    def job_id(self) -> str | None:
        """The cluster job's id (None for a local trainer)."""
        ...

    def lines(self) -> Iterator[str]:
        """The trainer's stdout, line by line, until it ends."""
        ...

    def poll(self) -> int | None:
        """None while it runs; then its exit status (negative: the signal that ended it)."""
        ...

    def stop(self) -> None:
        """End it now (timeout, daemon stopping)."""
        ...

    def wait(self) -> int: ...

    def failure(self) -> str | None:
        """The launcher's own account of a failure (a cluster job's message), if it has one."""
        ...

    def close(self) -> None: ...


class Launcher(Protocol):
    def start(self, spec_path: str, run_id: str, log: IO[str], env: dict[str, str]) -> Trainer:
        """Start the trainer on `spec_path`. `log`: where its stderr goes (a local child's);
        `env`: its environment on this node."""
        ...


class LocalTrainer:
    """The trainer as a child process of the daemon, in its own session (a kill takes its helpers)."""

    job_id: str | None = None

    def __init__(self, command: list[str], log: IO[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.pid: int | None = self.process.pid

    def lines(self) -> Iterator[str]:
        assert self.process.stdout is not None
        yield from self.process.stdout

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the trainer alone, as an OOM kill would (tests)."""
        self.process.kill()

    def wait(self) -> int:
        return self.process.wait()

    def failure(self) -> str | None:
        return None

    def close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()


class LocalLauncher:
    """`local` (one trainer) or `torchrun` (`processes` ranks on this node)."""

    def __init__(self, python: str, processes: int = 1) -> None:
        self._python = python
        self._processes = processes

    def start(self, spec_path: str, run_id: str, log: IO[str], env: dict[str, str]) -> LocalTrainer:
        return LocalTrainer(trainer_command(self._python, self._processes, spec_path), log, env)


def trainer_command(python: str, processes: int, spec_path: str) -> list[str]:
    if processes == 1:
        return [python, "-m", "evolvd.training.child", spec_path]
    return [python, "-m", "evolvd.training.launch", str(processes), spec_path]


_RAY_EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": -signal.SIGKILL}


class RayJob:
    """A trainer submitted to a Ray cluster. Its stdout is the job's log (Ray keeps it on the head),
    read by polling; its status is the job's."""

    pid: int | None = None

    def __init__(self, client: JobSubmissionClient, job_id: str, address: str) -> None:
        self._client = client
        self._address = address
        self.job_id = job_id

    def _status(self) -> str:
        return str(self._client.get_job_status(self.job_id).value)

    def lines(self) -> Iterator[str]:
        read, pending = 0, ""
        while True:
            ended = self.poll() is not None  # before the read, so the last read has every line
            text = self._client.get_job_logs(self.job_id)
            pending += text[read:]
            read = len(text)
            *complete, pending = pending.split("\n")
            for line in complete:
                yield line + "\n"
            if ended:
                if pending:
                    yield pending
                return
            time.sleep(RAY_POLL_S)

    def poll(self) -> int | None:
        try:
            status = self._status()
        except Exception as exc:  # the head unreachable for a moment: still running, as far as we know
            logger.warning("Ray job %s: no status from %s (%s)", self.job_id, self._address, exc)
            return None  # a head that stays away ends the run at training.timeout_s
        return _RAY_EXIT.get(status)

    def stop(self) -> None:
        try:
            self._client.stop_job(self.job_id)
        except Exception as exc:  # the job may be gone with its cluster: say so, go on
            logger.warning("could not stop Ray job %s at %s: %s", self.job_id, self._address, exc)

    def wait(self) -> int:
        deadline = time.monotonic() + RAY_STOP_WAIT_S
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                return -signal.SIGKILL  # asked to stop and still not stopped: the run is over for us
            time.sleep(RAY_POLL_S)
        return code

    def failure(self) -> str | None:
        info = self._client.get_job_info(self.job_id)
        if info.status.value == "SUCCEEDED":
            return None
        first = (info.message or "no message").splitlines()[0]
        return f"Ray job {self.job_id} at {self._address} {info.status.value.lower()}: {first}"

    def close(self) -> None:
        return None


class RayLauncher:
    """`ray`: the trainer as a Ray job. The entrypoint is the local launcher's command with the
    cluster's Python; the spec, data set and output paths are data_dir's, which the cluster's nodes
    must share. The job asks for `num_cpus` (and a GPU per rank with `device: cuda`)."""

    def __init__(self, address: str, python: str, processes: int, num_cpus: float, gpus: int) -> None:
        self._address = address
        self._python = python
        self._processes = processes
        self._num_cpus = num_cpus
        self._gpus = gpus
        self._client: JobSubmissionClient | None = None

    def _connected(self) -> JobSubmissionClient:
        """The job client, connected at the first run (a cluster that is down fails that run, with its
        reason, and the training job retries it; it does not stop the daemon)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self._address)
        return self._client

    def start(self, spec_path: str, run_id: str, log: IO[str], env: dict[str, str]) -> RayJob:
        # The node's own environment, with only what the trainer needs from ours (no parent PID: on
        # the cluster the trainer's parent is Ray's job supervisor, and stop_job ends it).
        wanted = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")
        env_vars = {k: env[k] for k in wanted if k in env}
        # Unique per submission: a run retried after a daemon restart keeps its run id.
        submission = f"evolvd-{run_id}-{uuid.uuid4().hex[:8]}"
        client = self._connected()
        job_id = client.submit_job(
            entrypoint=shlex.join(trainer_command(self._python, self._processes, spec_path)),
            submission_id=submission,
            runtime_env={"env_vars": env_vars},
            entrypoint_num_cpus=self._num_cpus,
            entrypoint_num_gpus=self._gpus,
            metadata={"evolvd_run": run_id},
        )
        logger.info("training run %s submitted to Ray at %s as job %s", run_id, self._address, job_id)
        log.write(f"submitted to Ray at {self._address} as job {job_id}\n")
        return RayJob(client, job_id, self._address)


def launcher_for(training: TrainingConfig, processes: int) -> Launcher:
    """The launcher training.launcher names (`processes`: ranks, 1 for `local`)."""
    if training.launcher == "ray":
        assert training.ray_address is not None  # the config's validator requires it
        gpus = processes if training.device == "cuda" else 0
        return RayLauncher(training.ray_address, training.ray_python, processes, training.ray_num_cpus, gpus)
    return LocalLauncher(sys.executable, processes)
