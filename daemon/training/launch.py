"""Data-parallel training on one node: `python -m evolvd.training.launch PROCESSES SPEC.json` runs
`PROCESSES` copies of the training child under torchrun (torch.distributed.run, in this process), one
rank each, gradients averaged by DDP (gloo on CPUs, NCCL on GPUs).

The daemon starts this launcher like the single child (training.launcher: torchrun), and it keeps the
child's contract: its own death takes the ranks with it (each rank's parent is this process), and the
ranks speak the child's progress lines on the stdout they share: rank 0 its progress and result, every
rank the digest of its LoRA weights, so the run records that they ended identical."""

from __future__ import annotations

import os
import sys

from evolvd.lifeline import PARENT_PID_ENV, die_with_parent


def torchrun_arguments(processes: int, spec: str) -> list[str]:
    """torchrun's command line for one node: a private rendezvous on a free loopback port."""
    return [
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a failed rank fails the run; the training job retries it whole
        "-m",
        "evolvd.training.child",
        spec,
    ]


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit() or int(args[0]) < 1:
        print("usage: python -m evolvd.training.launch PROCESSES SPEC.json", file=sys.stderr)
        return 2
    os.environ[PARENT_PID_ENV] = str(os.getpid())  # the ranks' parent: they die with this launcher
    from torch.distributed.run import main as torchrun

    torchrun(torchrun_arguments(int(args[0]), args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
