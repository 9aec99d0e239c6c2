"""The device and precision evolvd serves and trains in: a CUDA GPU when the trainer sees one, and
bfloat16 only where the device it runs on computes it natively. The GPU branches run here with torch's
CUDA probes replaced (this machine has no GPU); tests/test_training.py trains for real on the CPU."""

from __future__ import annotations

import pytest

from evolvd import precision
from evolvd.config import EvolvdConfig
from evolvd.serving.vllm_entry import resolve_dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bfloat16_only_where_native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "native_bfloat16", lambda device=None: native)
    assert precision.resolve("auto") == ("bfloat16" if native else "float32")
    # An explicit setting is the operator's choice, kept as given.
    assert precision.resolve("bfloat16") == "bfloat16"
    assert precision.resolve("float32") == "float32"


def test_defaults_are_auto() -> None:
    config = EvolvdConfig()
    assert config.serving.dtype == "auto"
    assert config.training.dtype == "auto"


def test_vllm_launcher_resolves_only_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bfloat16", lambda device=None: False)
    assert resolve_dtype(["--model", "m", "--dtype", "auto", "--port", "1"]) == [
        "--model", "m", "--dtype", "float32", "--port", "1",
    ]  # fmt: skip
    assert resolve_dtype(["--dtype", "bfloat16"]) == ["--dtype", "bfloat16"]
    assert resolve_dtype(["--model", "auto"]) == ["--model", "auto"]  # only the value of --dtype


class FakeHost:
    """torch's view of a host: whether a GPU is visible and which devices compute bfloat16."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpu: bool, gpu_bf16: bool, cpu_bf16: bool) -> None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)


def test_training_uses_a_visible_gpu_with_bf16_and_a_cpu_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHost(monkeypatch, gpu=True, gpu_bf16=True, cpu_bf16=False)
    assert precision.resolve_device("auto") == "cuda"
    assert precision.resolve("auto", "cuda") == "bfloat16"
    # Forced onto the CPU of that GPU host: the CPU is asked about bf16, not the GPU.
    assert precision.resolve_device("cpu") == "cpu"
    assert precision.resolve("auto", "cpu") == "float32"

    FakeHost(monkeypatch, gpu=True, gpu_bf16=False, cpu_bf16=False)  # an older GPU (no bf16)
    assert precision.resolve("auto", "cuda") == "float32"

    FakeHost(monkeypatch, gpu=False, gpu_bf16=False, cpu_bf16=True)  # a CPU with AVX512-BF16
    assert precision.resolve_device("auto") == "cpu"
    assert precision.resolve("auto", "cpu") == "bfloat16"


def test_cuda_asked_for_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeHost(monkeypatch, gpu=False, gpu_bf16=False, cpu_bf16=False)
    with pytest.raises(precision.DeviceUnavailableError, match="no CUDA device is visible"):
        precision.resolve_device("cuda")


def test_the_training_device_travels_from_the_config_to_the_child() -> None:
    from evolvd.config import TrainingConfig
    from evolvd.training.spec import hyperparameters_for

    assert EvolvdConfig().training.device == "auto"
    assert hyperparameters_for(TrainingConfig(device="cuda"), 10).device == "cuda"
