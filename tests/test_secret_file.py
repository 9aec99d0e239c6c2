"""Secrets generated into data_dir (the admin token, the vLLM key): made once, owner-only, refused
when other users can read them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from evolvd.config import EvolvdConfig, ServingConfig
from evolvd.secret_file import SecretFileError, owner_only_secret
from evolvd.serving.vllm_key import vllm_api_key


def test_a_secret_is_generated_once_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "x.key"
    first = owner_only_secret(path)
    assert len(first) >= 40 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert owner_only_secret(path) == first
    path.chmod(0o640)
    with pytest.raises(SecretFileError, match="readable by other users"):
        owner_only_secret(path)
    path.write_text("")
    path.chmod(0o600)
    with pytest.raises(SecretFileError, match="is empty"):
        owner_only_secret(path)


def test_the_vllm_key_is_the_operators_else_generated_for_a_managed_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    managed = EvolvdConfig(data_dir=tmp_path)
    generated = vllm_api_key(managed)
    assert generated and (tmp_path / "vllm.key").read_text().strip() == generated
    external = EvolvdConfig(
        data_dir=tmp_path, serving=ServingConfig(mode="external", url="http://127.0.0.1:1")
    )
    assert vllm_api_key(external) is None, "an external server without a configured key wants none"
    monkeypatch.setenv("EVOLVD_VLLM_API_KEY", "operators-key")
    assert vllm_api_key(managed) == vllm_api_key(external) == "operators-key"
