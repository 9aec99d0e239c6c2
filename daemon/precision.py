"""Which floating-point precision to serve and train in on this machine.

bfloat16 halves memory and is fast where the hardware computes it natively (GPUs with bf16, x86 CPUs
with AVX512-BF16 or AMX); elsewhere torch emulates it, and that is slow beyond use: on a 2-core AVX2
EPYC, one LoRA training step of the bundled model took 110 s in bf16 against 3.8 s in fp32, and vLLM
generated 21 against 66 tokens/s at 16 concurrent requests. So `auto` (the default of
`serving.dtype` and `training.dtype`) picks bfloat16 only where it is native.
"""

from __future__ import annotations

from typing import Literal

Precision = Literal["bfloat16", "float16", "float32"]
PrecisionSetting = Literal["auto", "bfloat16", "float16", "float32"]


def native_bfloat16() -> bool:
    """Whether this machine's accelerator (or, without one, its CPU) computes bfloat16 natively."""
    import torch  # heavy: only where a precision is resolved (the training child, serving startup)

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    # torch.cpu's capability probes are the same cpuinfo checks torch uses to pick its own kernels.
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve(setting: PrecisionSetting) -> Precision:
    """The precision a setting stands for here: `auto` becomes bfloat16 where native, else float32."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bfloat16() else "float32"
