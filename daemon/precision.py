"""Which device and floating-point precision to serve and train in on this machine.

bfloat16 halves memory and is fast where the hardware computes it natively (GPUs with bf16, x86 CPUs
with AVX512-BF16 or AMX); elsewhere torch emulates it, and that is slow beyond use: on a 2-core AVX2
EPYC, one LoRA training step of the bundled model took 110 s in bf16 against 3.8 s in fp32, and vLLM
generated 21 against 66 tokens/s at 16 concurrent requests. So `auto` (the default of `serving.dtype`
and `training.dtype`) picks bfloat16 only where it is native, on the device the work runs on: a run
forced onto the CPU of a GPU host asks the CPU, not the GPU. `training.device: auto` trains on a CUDA
GPU when the trainer sees one.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["bfloat16", "float16", "float32"]
PrecisionSetting = Literal["auto", "bfloat16", "float16", "float32"]
Device = Literal["cpu", "cuda"]
DeviceSetting = Literal["auto", "cpu", "cuda"]


class DeviceUnavailableError(RuntimeError):
    """The configured device is not there (training.device cuda on a host without a visible GPU)."""


def cuda_available() -> bool:
    import torch  # heavy: only where a device is resolved (the training child, serving startup)

    return bool(torch.cuda.is_available())


def resolve_device(setting: DeviceSetting) -> Device:
    """The device a setting stands for here: `auto` is CUDA when a GPU is visible, else the CPU."""
    if setting == "auto":
        return "cuda" if cuda_available() else "cpu"
    if setting == "cuda" and not cuda_available():
        raise DeviceUnavailableError(
            "training.device is cuda, but no CUDA device is visible to the trainer"
            " (check the driver and CUDA_VISIBLE_DEVICES, or set training.device auto or cpu)"
        )
    return setting


def native_bfloat16(device: Device | None = None) -> bool:
    """Whether `device` (default: the accelerator if there is one, else the CPU) computes bfloat16
    natively."""
    import torch

    if device is None:
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    # torch.cpu's capability probes are the same cpuinfo checks torch uses to pick its own kernels.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve(setting: PrecisionSetting, device: Device | None = None) -> Precision:
    """The precision a setting stands for on `device`: `auto` becomes bfloat16 where native, else
    float32."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16(device) else "float32"
