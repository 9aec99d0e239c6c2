"""The precision evolvd serves and trains in: bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest

from evolvd import precision
from evolvd.config import EvolvdConfig
from evolvd.serving.vllm_entry import resolve_dtype


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bfloat16_only_where_native(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision, "native_bfloat16", lambda: native)
    assert precision.resolve("auto") == ("bfloat16" if native else "float32")
    # An explicit setting is the operator's choice, kept as given.
    assert precision.resolve("bfloat16") == "bfloat16"
    assert precision.resolve("float32") == "float32"


def test_defaults_are_auto() -> None:
    config = EvolvdConfig()
    assert config.serving.dtype == "auto"
    assert config.training.dtype == "auto"


def test_vllm_launcher_resolves_only_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    assert resolve_dtype(["--model", "m", "--dtype", "auto", "--port", "1"]) == [
        "--model", "m", "--dtype", "float32", "--port", "1",
    ]  # fmt: skip
    assert resolve_dtype(["--dtype", "bfloat16"]) == ["--dtype", "bfloat16"]
    assert resolve_dtype(["--model", "auto"]) == ["--model", "auto"]  # only the value of --dtype
