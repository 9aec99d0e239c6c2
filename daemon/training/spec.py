"""What a training run is told to do: one JSON file the daemon writes and the child process reads.

The spec travels as a file, not as arguments, so a failed run can be re-run by hand with exactly the
inputs it had (`python -m evolvd.training.child SPEC`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evolvd.config import TrainingConfig
from evolvd.precision import DeviceSetting, PrecisionSetting


@dataclass(frozen=True)
class Hyperparameters:
    max_steps: int = 30
    batch_size: int = 4
    learning_rate: float = 2e-4
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    max_length: int = 256
    dpo_steps: int = 10
    dpo_beta: float = 0.1
    seed: int = 0
    torch_threads: int = 2
    dtype: PrecisionSetting = "auto"
    """Resolved by the child (evolvd.precision.resolve): auto picks bfloat16 only where native."""
    device: DeviceSetting = "auto"
    """Resolved by the child (evolvd.precision.resolve_device): auto is a CUDA GPU when one is visible."""


def hyperparameters_for(config: TrainingConfig, n_examples: int) -> Hyperparameters:
    """The hyperparameters a run on `n_examples` gets from the daemon's training config."""
    return Hyperparameters(
        max_steps=capped_steps(config.max_steps, config.max_epochs, n_examples, config.batch_size),
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=tuple(config.target_modules),
        max_length=config.max_length,
        dpo_steps=config.dpo_steps,
        torch_threads=config.torch_threads,
        dtype=config.dtype,
        device=config.device,
    )


def capped_steps(max_steps: int, max_epochs: float | None, n_examples: int, batch_size: int) -> int:
    """Optimizer steps for a snapshot: max_steps, or fewer when that would pass over the snapshot
    more than max_epochs times (always at least one step)."""
    if max_epochs is None or n_examples <= 0:
        return max_steps
    return max(1, min(max_steps, math.ceil(max_epochs * n_examples / batch_size)))


@dataclass(frozen=True)
class TrainSpec:
    run_id: str
    base_model: str
    """The base model's Hugging Face folder."""
    dataset: str
    """Parquet snapshot of SFT examples (prompt, completion)."""
    output_dir: str
    work_dir: str
    """Scratch space for the trainers (never part of the adapter)."""
    pairs: str | None = None
    """Parquet of preference pairs (prompt, chosen, rejected); None: no DPO stage."""
    parent_adapter: str | None = None
    """Adapter folder to continue from (the live adapter); None: a fresh LoRA on the base model."""
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    tensorboard_dir: str | None = None
    """Where the trainers write TensorBoard event files, one folder per phase (sft, dpo); None: none."""
    mlflow_tracking_uri: str | None = None
    """Where the trainers also log to MLflow (one run per phase); None: not at all."""
    mlflow_experiment: str = "evolvd"

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> TrainSpec:
        raw = json.loads(path.read_text())
        hp = raw.pop("hyperparameters", {})
        hp["target_modules"] = tuple(hp.get("target_modules", Hyperparameters.target_modules))
        return cls(**raw, hyperparameters=Hyperparameters(**hp))
