"""The base model bootstrap: the bundled GGUF becomes a verified Hugging Face folder, once."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import run_cli

from evolvd.connectors import model_bootstrap as bootstrap
from evolvd.connectors.model_bootstrap import (
    BUNDLED_NAME,
    HASH_CACHE,
    MANIFEST,
    ModelBootstrapError,
    ensure_bundled_model,
    folder_hash,
    resolve_base_model,
    verified,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = (
    REPO / "var" / "test-cache" / "models"
)  # shared with test_serving.py: converted once per machine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted() -> Path:
    return ensure_bundled_model(MODEL_CACHE).path


def copy_model(source: Path, models_dir: Path) -> Path:
    target = models_dir / BUNDLED_NAME
    shutil.copytree(source, target)
    return target


def test_conversion_is_a_loadable_hugging_face_folder_with_a_manifest(converted: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", MANIFEST):
        assert (converted / name).is_file(), name
    manifest = json.loads((converted / MANIFEST).read_text())
    assert manifest["content_hash"] == folder_hash(converted)
    assert json.loads((converted / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())


def test_a_verified_folder_is_reused_not_converted_again(converted: Path) -> None:
    started = time.monotonic()
    again = ensure_bundled_model(MODEL_CACHE)
    assert again.path == converted
    assert again.content_hash == folder_hash(converted)
    assert time.monotonic() - started < 15  # hashing only; a conversion takes ~30 s


def test_a_tampered_or_half_written_folder_is_detected_and_rebuilt(converted: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    target = copy_model(converted, models)
    (target / "config.json").write_text("{}")  # a file no longer matches the manifest
    assert verified(target) is None
    (target / MANIFEST).unlink()  # an interrupted run never wrote its manifest
    (models / f".{BUNDLED_NAME}.partial-12345").mkdir()  # and left its staging folder behind
    rebuilt = ensure_bundled_model(models)
    assert rebuilt.content_hash == folder_hash(converted)
    assert verified(target) is not None


def test_a_process_that_finds_a_conversion_under_way_waits_for_it_instead_of_converting(
    converted: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    other = FileLock(models / f".{BUNDLED_NAME}.lock")  # another process converting right now
    other.acquire()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ensure_bundled_model, models)
        time.sleep(0.5)
        assert not waiting.done(), "it must wait for the conversion under way"
        copy_model(converted, models)  # the other process's finished folder
        other.release()
        found = waiting.result(timeout=60)
    assert found.path == models / BUNDLED_NAME and found.content_hash == folder_hash(converted)
    assert not list(models.glob(f".{BUNDLED_NAME}.partial-*")), "nothing converted a second time"


def test_a_configured_model_folder_is_used_as_is(converted: Path, tmp_path: Path) -> None:
    mine = copy_model(converted, tmp_path / "elsewhere")
    base = resolve_base_model(mine, tmp_path / "unused")
    assert (base.path, base.name) == (mine, mine.name)
    assert not (tmp_path / "unused" / BUNDLED_NAME).exists(), "nothing converted"
    with pytest.raises(ModelBootstrapError, match="not a Hugging Face model folder"):
        resolve_base_model(tmp_path, tmp_path / "unused")


def test_model_init_command_reports_the_verified_model(converted: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    copy_model(converted, data / "models")
    env = {**os.environ, "EVOLVD_DATA_DIR": str(data)}
    result = run_cli("model", "init", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{BUNDLED_NAME}: {data / 'models' / BUNDLED_NAME} (sha256 ")
    assert folder_hash(converted) in result.stdout


def test_a_folder_hash_is_cached_by_file_sizes_and_modification_times(tmp_path: Path) -> None:
    folder, cache = tmp_path / "model", tmp_path / "cache"
    folder.mkdir()
    weights = folder / "model.safetensors"
    weights.write_bytes(b"A" * 1000)
    first = folder_hash(folder, cache_dir=cache)
    assert first == folder_hash(folder) and (cache / HASH_CACHE).exists()
    # Same size and mtime, other bytes: the cache answers without reading them (the documented
    # trade-off: a start no longer reads gigabytes to learn nothing changed).
    stat = weights.stat()
    weights.write_bytes(b"B" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_hash(folder, cache_dir=cache) == first
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # any write moves the mtime
    assert folder_hash(folder, cache_dir=cache) == folder_hash(folder) != first
    (folder / "extra.json").write_text("{}")  # a new file
    assert folder_hash(folder, cache_dir=cache) == folder_hash(folder)


def test_a_configured_path_naming_the_bundled_models_place_is_converted_on_a_fresh_volume(
    converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Kubernetes init container's case: the config names where the bundled model goes."""
    models = tmp_path / "var" / "models"
    monkeypatch.setattr(
        bootstrap, "_convert", lambda gguf, out: shutil.copytree(converted, out)
    )  # ~30 s saved
    base = resolve_base_model(models / BUNDLED_NAME, models)
    assert (base.path, base.name) == (models / BUNDLED_NAME, BUNDLED_NAME)
    assert verified(models / BUNDLED_NAME) is not None
