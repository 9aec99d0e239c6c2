"""The adapter folder format, in one place: the PEFT files, evolvd's manifest beside them (written by
the trainer, read by the registry), and the check that rejects a broken LoRA adapter with a precise
reason before it reaches the serving process.

vLLM can answer 200 to a load of something that is not a valid adapter, and a bad load costs a trip
into its worker; so evolvd checks first: the files, the config, the rank, the safetensors header,
every LoRA tensor's shape against the base model's own weights (a wrong base model shows up here),
finite values, and, for adapters evolvd trained, the content hash in their manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_MANIFEST = "evolvd-adapter.json"

# base_model.model.<module path>.lora_A.weight  /  ...lora_B.weight
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class AdapterRejectedError(ValueError):
    """The adapter cannot be served; the message says exactly why."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    rank: int
    target_modules: tuple[str, ...]
    tensors: int
    weights_sha256: str


def _base_weight_shapes(base_model: Path) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in sorted(base_model.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a Mapping
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_adapter(
    path: Path, base_model: Path, max_rank: int, registered_sha256: str | None = None
) -> AdapterInfo:
    """Validate the adapter folder at `path` for serving on `base_model`; raise AdapterRejectedError.
    `registered_sha256`: the weights' hash recorded at registration, which they must still have
    (checked instead of the hash in the trainer's manifest)."""
    if not path.is_dir():
        raise AdapterRejectedError(f"adapter folder {path} does not exist")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / required).is_file():
            raise AdapterRejectedError(f"adapter {path.name} is missing {required}")
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        rank = int(config["r"])
        targets = config.get("target_modules") or []
    except (ValueError, KeyError, TypeError) as exc:
        raise AdapterRejectedError(f"adapter {path.name}: unreadable {ADAPTER_CONFIG} ({exc})") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterRejectedError(f"adapter {path.name} is {config.get('peft_type')}, not LORA")
    if rank > max_rank:
        raise AdapterRejectedError(
            f"adapter {path.name} has rank {rank}, above the server's max_lora_rank {max_rank}"
        )
    weights_sha256 = file_sha256(path / ADAPTER_WEIGHTS)  # read once, for every check that needs it
    if registered_sha256 is not None:
        if weights_sha256 != registered_sha256:
            raise AdapterRejectedError(
                f"adapter {path.name}: its weights at {path} differ from the ones registered"
                f" (sha256 {registered_sha256[:12]}...): changed after registration, not loaded"
            )
    else:
        _check_manifest(path, weights_sha256)
    tensors = _check_weights(path, base_model, rank)
    return AdapterInfo(
        path,
        rank,
        tuple(sorted(targets)) if isinstance(targets, list) else (str(targets),),
        tensors,
        weights_sha256,
    )


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """The manifest of an adapter evolvd trained: its lineage and the hash of its weights (which
    `check_adapter` verifies before the adapter is ever served)."""
    (folder / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest evolvd's trainer wrote beside the weights, or {} for an adapter trained elsewhere."""
    manifest_file = folder / ADAPTER_MANIFEST
    if not manifest_file.exists():
        return {}
    manifest: dict[str, Any] = json.loads(manifest_file.read_text())
    return manifest


def _check_manifest(path: Path, weights_sha256: str) -> None:
    manifest_file = path / ADAPTER_MANIFEST
    if not manifest_file.exists():
        return  # an adapter from elsewhere: only the structural checks apply
    try:
        expected = json.loads(manifest_file.read_text())["weights_sha256"]
    except (ValueError, KeyError) as exc:
        raise AdapterRejectedError(f"adapter {path.name}: unreadable {ADAPTER_MANIFEST} ({exc})") from exc
    if weights_sha256 != expected:
        raise AdapterRejectedError(
            f"adapter {path.name}: weights do not match the hash in its manifest (corrupt)"
        )


def _check_weights(path: Path, base_model: Path, rank: int) -> int:
    base = _base_weight_shapes(base_model)
    try:
        handle = safe_open(str(path / ADAPTER_WEIGHTS), framework="numpy")
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise AdapterRejectedError(f"adapter {path.name}: weights file is corrupt ({exc})") from exc
    count = 0
    with handle as f:
        for key in f.keys():  # noqa: SIM118
            match = _LORA_KEY.match(key)
            if match is None:
                continue
            shape = tuple(f.get_slice(key).get_shape())
            module = match["module"]
            base_shape = base.get(f"{module}.weight")
            if base_shape is None or len(base_shape) != 2:
                raise AdapterRejectedError(
                    f"adapter {path.name} targets {module}, which the base model does not have "
                    "(wrong base model?)"
                )
            out_dim, in_dim = base_shape
            expected = (rank, in_dim) if match["ab"] == "A" else (out_dim, rank)
            if shape != expected:
                raise AdapterRejectedError(
                    f"adapter {path.name}: {key} has shape {shape}, the base model needs {expected} "
                    "(trained for another base model?)"
                )
            _check_finite(path.name, key, f)
            count += 1
    if count == 0:
        raise AdapterRejectedError(f"adapter {path.name} holds no LoRA weights")
    return count


def _check_finite(name: str, key: str, f: object) -> None:
    try:
        values = f.get_tensor(key)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # dtypes numpy cannot hold (bfloat16): shapes were checked
        return
    except Exception as exc:
        raise AdapterRejectedError(f"adapter {name}: cannot read {key} ({exc})") from exc
    if not np.isfinite(values).all():
        raise AdapterRejectedError(f"adapter {name}: {key} contains NaN or infinite values")
