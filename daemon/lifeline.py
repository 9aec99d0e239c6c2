"""Tie a child process's life to the daemon's: `python -m evolvd.lifeline PROGRAM ARGS...`.

Sets Linux's parent-death signal, then execs PROGRAM (the setting survives exec). A daemon killed
with -9 thus takes its embedded broker and vLLM server with it instead of orphaning them. Done in a
launcher rather than a preexec_fn, which is unsafe in a process with threads.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "EVOLVD_PARENT_PID"


def die_with_parent() -> None:
    """Ask for SIGTERM when the parent dies; exit at once if it already has."""
    parent = int(os.environ.get(PARENT_PID_ENV, os.getppid()))
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def child_environment() -> dict[str, str]:
    """The environment for a child started through this launcher."""
    return {**os.environ, PARENT_PID_ENV: str(os.getpid())}


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m evolvd.lifeline PROGRAM [ARGS...]")
    die_with_parent()
    os.execv(sys.argv[1], sys.argv[1:])  # noqa: S606 - a fixed program chosen by the daemon


if __name__ == "__main__":
    main()
