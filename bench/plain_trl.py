"""The plain baseline of bench/training.py: the shortest TRL + PEFT script for the same training job.

Reads the same spec file as evolvd's child (for identical inputs) but uses nothing of evolvd; it
prints one timing line per logged step, in the child's progress format, so both are timed alike.

    python bench/plain_trl.py SPEC.json
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer

PROGRESS = "EVOLVD_PROGRESS "


class StepLines(TrainerCallback):  # type: ignore[misc]
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            print(PROGRESS + json.dumps({"type": "progress", "step": state.global_step}), flush=True)


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())  # noqa: SIM115 - a one-shot script
    hp = spec["hyperparameters"]
    torch.set_num_threads(hp["torch_threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base_model"])
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    precision = hp["dtype"]  # resolved by bench/training.py, so both runs train in the same precision
    model = AutoModelForCausalLM.from_pretrained(spec["base_model"], dtype=getattr(torch, precision))
    model = get_peft_model(
        model,
        LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                   target_modules=list(hp["target_modules"]), task_type="CAUSAL_LM"),
    )  # fmt: skip
    rows = Dataset.from_parquet(spec["dataset"]).to_list()
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in rows
        ]
    )
    config = SFTConfig(
        output_dir=spec["work_dir"] + "-plain",
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        per_device_train_batch_size=hp["batch_size"],
        max_length=hp["max_length"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        bf16=precision == "bfloat16",
        seed=hp["seed"],
    )
    SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[StepLines()]
    ).train()


if __name__ == "__main__":
    main(sys.argv[1])
