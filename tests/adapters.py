"""Make real LoRA adapters with PEFT for the serving tests: good ones, and each kind of broken one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def make_adapter(base_model: Path, out: Path, rank: int = 8, seed: int = 0) -> Path:
    """A LoRA adapter with random (non-identity) weights: valid to load and serve, no training needed."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")  # fmt: skip
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_wrong_base_adapter(out: Path) -> Path:
    """Same module names, other shapes: an adapter trained for a different (smaller) Llama."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 1000}  # fmt: skip
    tiny = LlamaForCausalLM(LlamaConfig(**shape))
    config = LoraConfig(
        r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(tiny, config).save_pretrained(out)
    return out


def make_missing_files_adapter(good: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    shutil.copy(good / "adapter_config.json", out / "adapter_config.json")
    return out


def make_corrupt_adapter(good: Path, out: Path) -> Path:
    shutil.copytree(good, out)
    weights = out / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return out


def make_nan_adapter(good: Path, out: Path) -> Path:
    """Intact file, poisoned values: the header parses, the numbers do not."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(good, out)
    tensors = load_file(out / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first][...] = float("nan")
    save_file(tensors, out / "adapter_model.safetensors")
    return out


def rank_of(adapter: Path) -> int:
    return int(json.loads((adapter / "adapter_config.json").read_text())["r"])
