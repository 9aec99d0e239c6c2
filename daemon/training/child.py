"""The training child process: SFT (TRL SFTTrainer) on a frozen snapshot, then optionally DPO
(TRL DPOTrainer) on self-generated preference pairs, into one LoRA adapter (PEFT).

It runs apart from the daemon so an OOM, a crash or a hung step costs only this process; it talks
back through lines on stdout that start with PROGRESS_PREFIX (JSON), everything else being log.
Under torchrun (evolvd.training.launch) it is one rank of several: rank 0 reports progress, saves the
adapter and reports the result; every rank reports the digest of its LoRA weights.

    python -m evolvd.training.child SPEC.json
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from evolvd.lifeline import die_with_parent
from evolvd.precision import resolve, resolve_device
from evolvd.training.spec import TrainSpec

PROGRESS_PREFIX = "EVOLVD_PROGRESS "


def emit(kind: str, **fields: Any) -> None:
    """One progress line in one write(2): under torchrun every rank shares the parent's stdout pipe,
    and print() writes the text and its newline apart, so two ranks' lines ran into one (seen under
    load: the parent read neither rank's digest). A pipe write of up to PIPE_BUF bytes is atomic."""
    line = (PROGRESS_PREFIX + json.dumps({"type": kind, **fields}) + "\n").encode()
    sys.stdout.flush()  # what this process printed before goes first
    os.write(sys.stdout.fileno(), line)


def rank() -> tuple[int, int]:
    """(this process's rank, the number of ranks): (0, 1) unless torchrun started it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def lora_digest(state_dict: dict[str, Any]) -> str:
    """sha256 over a LoRA state dict's tensors in name order (as PEFT saves them): equal on every rank
    of a data-parallel run, and equal to the saved adapter's."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode() + b"\0")
        digest.update(state_dict[name].detach().to("cpu").contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def _conversation(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def train(spec: TrainSpec) -> dict[str, Any]:
    # Heavy imports here, so that `--help`-style failures and the parent's import of PROGRESS_PREFIX
    # stay cheap.
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    hp = spec.hyperparameters
    device = resolve_device(hp.device)
    precision = resolve(hp.dtype, device)
    torch.set_num_threads(hp.torch_threads)
    torch.manual_seed(hp.seed)
    started = time.monotonic()

    class Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self, phase: str, max_steps: int) -> None:
            self.phase, self.max_steps = phase, max_steps

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs and state.is_world_process_zero:
                emit(
                    "progress",
                    phase=self.phase,
                    step=state.global_step,
                    max_steps=self.max_steps,
                    loss=float(logs["loss"]),
                )

    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec.base_model, dtype=getattr(torch, precision))
    if spec.parent_adapter is not None:
        model = PeftModel.from_pretrained(model, spec.parent_adapter, is_trainable=True)
    else:
        lora = LoraConfig(
            r=hp.lora_r,
            lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout,
            target_modules=list(hp.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    this_rank, ranks = rank()
    if this_rank == 0:
        emit("loaded", seconds=round(time.monotonic() - started, 2), ranks=ranks)

    rows = Dataset.from_parquet(spec.dataset).to_list()
    sft_data = Dataset.from_list(
        [{"prompt": _conversation(r["prompt"]), "completion": _answer(r["completion"])} for r in rows]
    )
    common: dict[str, Any] = {
        "output_dir": spec.work_dir,  # trainer scratch; the adapter goes to spec.output_dir
        "per_device_train_batch_size": hp.batch_size,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": (["tensorboard"] if spec.tensorboard_dir else [])
        + (["mlflow"] if spec.mlflow_tracking_uri else []),
        "disable_tqdm": True,
        "use_cpu": device == "cpu",
        "bf16": precision == "bfloat16",
        "seed": hp.seed,
        "dataloader_num_workers": 0,
        "max_length": hp.max_length,
        # Several ranks: gloo between CPUs, NCCL between GPUs; LoRA leaves no parameter unused.
        **(
            {"ddp_backend": "gloo" if device == "cpu" else "nccl", "ddp_find_unused_parameters": False}
            if ranks > 1
            else {}
        ),
    }
    _tensorboard_phase(spec, "sft")
    sft = SFTTrainer(
        model=model,
        args=SFTConfig(
            max_steps=hp.max_steps, learning_rate=hp.learning_rate, run_name=f"{spec.run_id}-sft", **common
        ),
        train_dataset=sft_data,
        processing_class=tokenizer,
        callbacks=[Progress("sft", hp.max_steps)],
    )
    sft_result = sft.train()
    metrics: dict[str, Any] = {
        "sft_steps": sft_result.global_step,
        "sft_loss": _finite(sft_result.training_loss),
        "sft_examples": len(rows),
        "dtype": precision,
        "device": device,
        "ranks": ranks,
    }

    if spec.pairs is not None and hp.dpo_steps > 0:
        pair_rows = Dataset.from_parquet(spec.pairs).to_list()
        dpo_data = Dataset.from_list(
            [
                {
                    "prompt": _conversation(r["prompt"]),
                    "chosen": _answer(r["chosen"]),
                    "rejected": _answer(r["rejected"]),
                }
                for r in pair_rows
            ]
        )
        _tensorboard_phase(spec, "dpo")
        dpo = DPOTrainer(
            model=sft.model,
            ref_model=None,  # a PEFT model: the reference is the same model with the adapter disabled
            args=DPOConfig(
                max_steps=hp.dpo_steps,
                learning_rate=hp.learning_rate / 4,
                beta=hp.dpo_beta,
                run_name=f"{spec.run_id}-dpo",
                **common,
            ),
            train_dataset=dpo_data,
            processing_class=tokenizer,
            callbacks=[Progress("dpo", hp.dpo_steps)],
        )
        dpo_result = dpo.train()
        metrics.update(
            dpo_steps=dpo_result.global_step,
            dpo_loss=_finite(dpo_result.training_loss),
            dpo_pairs=len(pair_rows),
        )
        final_model = dpo.model
    else:
        final_model = sft.model

    from peft import get_peft_model_state_dict

    emit("rank", rank=this_rank, lora_sha256=lora_digest(get_peft_model_state_dict(final_model)))
    if this_rank == 0:
        # DPO keeps a frozen copy of the starting adapter as its reference ("ref"): only ours is saved.
        final_model.save_pretrained(spec.output_dir, selected_adapters=["default"])
    metrics["train_seconds"] = round(time.monotonic() - started, 2)
    return metrics


def _tensorboard_phase(spec: TrainSpec, phase: str) -> None:
    """Point transformers' TensorBoard callback at this phase's folder (it reads the variable when the
    trainer is made; `logging_dir` is gone from TrainingArguments in transformers 5), and its MLflow
    callback at the tracking URI (it reads these when the run starts; the run is named by `run_name`)."""
    if spec.tensorboard_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(spec.tensorboard_dir) / phase)
    if spec.mlflow_tracking_uri is not None:
        os.environ["MLFLOW_TRACKING_URI"] = spec.mlflow_tracking_uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = spec.mlflow_experiment


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    # A daemon killed with -9 takes its trainer with it: a restarted daemon would otherwise start a
    # second run beside an orphan still training on the old one.
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m evolvd.training.child SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = TrainSpec.read(Path(args[0]))
        metrics = train(spec)
    except Exception as exc:  # the parent records this line as the run's failure reason
        traceback.print_exc()
        emit("error", reason=f"{type(exc).__name__}: {exc}"[:500])
        return 1
    if metrics.get("sft_loss") is None:
        emit("error", reason="training loss is not finite")
        return 1
    if rank()[0] == 0:
        emit("done", metrics=metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
