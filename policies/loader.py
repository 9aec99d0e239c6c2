"""Read the policy files: shipped defaults, with an operator's policy directory merged over them.

Each file is validated against its schema (policies.models); every problem comes back as a
FieldError naming the file, the line and the field, in the same shape as config errors.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from evolvd.config_file import ConfigError, FieldError, errors_from_validation, read_yaml
from evolvd.policies.models import (
    POLICY_MODELS,
    DriftPolicy,
    LabelingPolicy,
    PromotionPolicy,
    SafetyPolicy,
    TrainingPolicy,
)

PolicyT = TypeVar("PolicyT", bound=BaseModel)
PROBE_SETS = ("safety_harmful", "safety_benign", "output_drift", "forgetting")


def defaults_dir() -> Path:
    """The shipped default policy files (inside the installed package)."""
    return Path(str(resources.files("evolvd.policies") / "defaults"))


def demo_dir() -> Path:
    """Demo-sized policy files (`evolvd run --demo`): a small first training run and a short canary."""
    return Path(str(resources.files("evolvd.policies") / "demo"))


@dataclass(frozen=True)
class PolicyFile:
    """One loaded policy: its validated model, where it came from and its content hash."""

    name: str
    policy: BaseModel
    source: str
    """The operator's file, or `<default>` when the shipped default is in force unchanged."""

    content_hash: str
    """sha256 of the effective policy (defaults merged with the operator's edits), 16 hex chars.
    Formatting and comment edits do not change it; any value change does."""


@dataclass(frozen=True)
class PolicySet:
    """Every policy in force together (one per file: safety, drift, training, promotion, labeling)."""

    files: dict[str, PolicyFile]
    directory: Path | None = None
    loaded_from: tuple[str, ...] = field(default=())

    def _get(self, name: str, kind: type[PolicyT]) -> PolicyT:
        policy = self.files[name].policy
        assert isinstance(policy, kind)
        return policy

    @property
    def safety(self) -> SafetyPolicy:
        return self._get("safety", SafetyPolicy)

    @property
    def drift(self) -> DriftPolicy:
        return self._get("drift", DriftPolicy)

    @property
    def training(self) -> TrainingPolicy:
        return self._get("training", TrainingPolicy)

    @property
    def promotion(self) -> PromotionPolicy:
        return self._get("promotion", PromotionPolicy)

    @property
    def labeling(self) -> LabelingPolicy:
        return self._get("labeling", LabelingPolicy)

    def hash_of(self, name: str) -> str:
        return self.files[name].content_hash

    def describe(self) -> dict[str, Any]:
        return {name: {"source": f.source, "hash": f.content_hash} for name, f in self.files.items()}


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key. A list replaces the default list, or adds to it when written as
    `{extend: [...]}` (one more injection pattern must not drop the shipped ones); any other value
    replaces the default."""
    out = dict(base)
    for key, value in override.items():
        default = out.get(key)
        if isinstance(default, list) and isinstance(value, Mapping) and set(value) == {"extend"}:
            added = value["extend"]
            out[key] = (
                [*default, *added] if isinstance(added, list) else added
            )  # not a list: the schema says so
        elif isinstance(value, Mapping) and isinstance(default, Mapping):
            out[key] = _merge(default, value)
        else:
            out[key] = value
    return out


def content_hash(policy: BaseModel) -> str:
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_policy_file(name: str, path: Path | None) -> PolicyFile:
    """Validate one policy: the default for `name`, with `path` (if given) merged over it."""
    default_path = defaults_dir() / f"{name}.yaml"
    data, lines = read_yaml(default_path)
    source = default_path
    if path is not None:
        edits, lines = read_yaml(path)
        if not edits and _is_empty(path):
            raise ConfigError(
                [
                    FieldError(
                        str(path),
                        None,
                        "",
                        "the file is empty (a truncated write?); the previous policy stays in force. "
                        "To go back to the shipped defaults, write `{}` in it",
                    )
                ]
            )
        data, source = _merge(data, edits), path
    try:
        policy = POLICY_MODELS[name](**data)
    except ValidationError as exc:
        # A field the operator did not touch can fail a cross-field rule with one they did:
        # errors_from_validation walks up to the nearest line their file has, where they act.
        errors = errors_from_validation(exc, str(source), lines)
        raise ConfigError(sorted(errors, key=lambda e: e.line or 0)) from exc  # in reading order
    shown = "<default>" if path is None else str(path)
    return PolicyFile(name, policy, shown, content_hash(policy))


def _is_empty(path: Path) -> bool:
    """No YAML document at all (an empty or comment-only file), as against an explicit `{}`."""
    return yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader) is None


def _not_a_policy_file(path: Path) -> FieldError:
    known = ", ".join(f"{n}.yaml" for n in POLICY_MODELS)
    return FieldError(str(path), None, "", f"not a policy file (expected one of {known})")


def policy_files_in(directory: Path) -> dict[str, Path]:
    """The operator's policy files in `directory`; an unknown YAML file there is an error."""
    found: dict[str, Path] = {}
    errors: list[FieldError] = []
    for path in sorted(directory.glob("*.y*ml")):
        if path.stem in POLICY_MODELS:
            if path.stem in found:
                errors.append(FieldError(str(path), None, "", f"{path.stem} is defined twice"))
            found[path.stem] = path
        else:
            errors.append(_not_a_policy_file(path))
    if errors:
        raise ConfigError(errors)
    return found


def load_policies(directory: Path | None) -> PolicySet:
    """Every policy in force: defaults, overridden by the files in `directory`.

    Raises ConfigError listing the problems of every file, not just the first bad one.
    """
    operator_files: dict[str, Path] = {}
    if directory is not None:
        if not directory.is_dir():
            raise ConfigError([FieldError(str(directory), None, "", "policy directory does not exist")])
        operator_files = policy_files_in(directory)
    files: dict[str, PolicyFile] = {}
    errors: list[FieldError] = []
    for name in POLICY_MODELS:
        try:
            files[name] = load_policy_file(name, operator_files.get(name))
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(errors)
    return PolicySet(files, directory, tuple(str(p) for p in operator_files.values()))


def check_policy_path(path: Path) -> PolicySet:
    """Validate a policy directory, or a single policy file (named by its stem), without a daemon."""
    if path.is_dir():
        return load_policies(path)
    if path.stem not in POLICY_MODELS:
        raise ConfigError([_not_a_policy_file(path)])
    if not path.exists():
        raise ConfigError([FieldError(str(path), None, "", "file does not exist")])
    one = load_policy_file(path.stem, path)
    files = {name: load_policy_file(name, None) for name in POLICY_MODELS if name != path.stem}
    files[path.stem] = one
    return PolicySet({name: files[name] for name in POLICY_MODELS}, None, (str(path),))


def probe_path(name: str, directory: Path | None) -> Path:
    """`probes/<name>.jsonl` in the operator's directory when it is there, else the shipped default."""
    if name not in PROBE_SETS:
        raise KeyError(f"unknown probe set {name!r}")
    if directory is not None and (directory / "probes" / f"{name}.jsonl").exists():
        return directory / "probes" / f"{name}.jsonl"
    return defaults_dir() / "probes" / f"{name}.jsonl"


SAFETY_ANCHOR = "safety_anchor.jsonl"


def safety_anchor_examples(directory: Path | None) -> list[tuple[str, str]]:
    """(prompt, refusal) pairs every training run mixes in (training.safety_anchor_share):
    `safety_anchor.jsonl` in the operator's directory when it is there, else the shipped default.
    Disjoint from the safety probes, which must stay unseen to measure what a run did to refusals."""
    path = directory / SAFETY_ANCHOR if directory is not None else None
    if path is None or not path.exists():
        path = defaults_dir() / SAFETY_ANCHOR
    examples = []
    for number, (prompt, completion) in _jsonl_fields(path, ("prompt", "completion"), "safety anchor"):
        if not prompt.strip() or not completion.strip():
            raise ConfigError([FieldError(str(path), number, "prompt", "empty prompt or completion")])
        examples.append((prompt, completion))
    return examples


def probe_prompts(name: str, directory: Path | None) -> list[str]:
    """A probe set's prompts (see probe_path for which file)."""
    path = probe_path(name, directory)
    return [prompt for _, (prompt,) in _jsonl_fields(path, ("prompt",), "probe")]


def _jsonl_fields(path: Path, keys: tuple[str, ...], what: str) -> list[tuple[int, tuple[str, ...]]]:
    """(line number, the lines' `keys` as strings) of a JSON Lines file; a bad line is a ConfigError
    naming the file and line."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append((number, tuple(str(row[k]) for k in keys)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError([FieldError(str(path), number, "prompt", f"bad {what} line: {exc}")]) from exc
    return out


def load_candidate(
    current_dir: Path | None, files: Mapping[str, str], replace_all: bool, shown_as: str
) -> PolicySet:
    """A policy set built from uploaded file texts, for a dry run on the daemon's machine.

    The uploaded files replace their namesakes in the daemon's policy directory (or, with
    `replace_all`, the directory as a whole). Errors name `shown_as`, the operator's own path.
    """
    with tempfile.TemporaryDirectory(prefix="evolvd-dry-run-") as tmp:
        staged = Path(tmp)
        if current_dir is not None and current_dir.is_dir() and not replace_all:
            shutil.copytree(current_dir, staged, dirs_exist_ok=True)
        for name, text in files.items():
            target = staged / Path(name).name  # never a path outside the staging folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        try:
            return load_policies(staged)
        except ConfigError as exc:
            shown = [_shown(e, staged, files, replace_all, shown_as, current_dir) for e in exc.errors]
            raise ConfigError(shown) from exc


def _shown(
    error: FieldError,
    staged: Path,
    files: Mapping[str, str],
    replace_all: bool,
    shown_as: str,
    current_dir: Path | None,
) -> FieldError:
    """Name an error's file as the operator knows it: their upload, or the daemon's own file."""
    name = Path(error.source).name
    if name in {Path(f).name for f in files}:
        source = shown_as if len(files) == 1 and not replace_all else str(Path(shown_as) / name)
    elif current_dir is not None:
        source = error.source.replace(str(staged), str(current_dir))
    else:
        source = error.source
    return FieldError(source, error.line, error.path, error.message)
