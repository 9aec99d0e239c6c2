"""Load an EvolvdConfig from a YAML file and report every problem with its place in the file.

Errors are FieldErrors (file, line, dotted path, message), a shape meant to be shared with the
policy files so operators read both kinds of mistake the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from evolvd.config import ENV_NESTED_DELIMITER, ENV_PREFIX, EvolvdConfig


@dataclass(frozen=True)
class FieldError:
    """One problem in a config or policy file."""

    source: str
    """The file (or `env VAR`) the bad value came from."""
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(Exception):
    """A file that failed validation; `errors` lists every problem, not just the first."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _line_index(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    """Map each dotted key path of a composed YAML tree to its 1-based line."""
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            _line_index(value_node, key, out)
            out[key] = key_node.start_mark.line + 1  # point at the key, where the operator looks
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*prefix, str(i)), out)


def _refuse_aliases(text: str, source: str) -> None:
    """Config and policy files may not use YAML aliases (`*name`): nested aliases expand
    exponentially (a 336-byte file took seconds to read), and a setting that silently follows
    another is a poor thing to audit."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            raise ConfigError(
                [
                    FieldError(
                        source,
                        line,
                        "",
                        f"YAML aliases are not allowed (*{event.anchor}): write the value out",
                    )
                ]
            )


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """Parse a YAML mapping and its line index. Syntax errors become a ConfigError with a line."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([FieldError(source, None, "", f"cannot read file: {exc}")]) from exc
    try:
        _refuse_aliases(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([FieldError(source, line, "", f"invalid YAML: {problem}")]) from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError([FieldError(source, 1, "", "the top level must be a mapping of keys to values")])
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    return data, lines


def _env_var_for(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(p.upper() for p in path)


def errors_from_validation(
    exc: ValidationError,
    source: str,
    lines: Mapping[tuple[str, ...], int],
    env: Mapping[str, str] | None = None,
) -> list[FieldError]:
    """Turn pydantic's errors into FieldErrors that name the file line (or env var) of each value."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (not a field here; check the spelling)"
        origin, line = source, _nearest_line(loc, lines)
        if env is not None:
            var = _env_var_for(loc)
            if var in env:
                origin, line = f"env {var}", None
        out.append(FieldError(origin, line, ".".join(loc), message))
    return out


def _nearest_line(loc: tuple[str, ...], lines: Mapping[tuple[str, ...], int]) -> int | None:
    # Cross-field validators report on the section, missing keys on their parent: walk up.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def load_config(path: Path | None) -> EvolvdConfig:
    """The effective config: built-in defaults < the YAML file < EVOLVD_* environment variables."""
    data: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    source = "<defaults>"
    if path is not None:
        data, lines = read_yaml(path)
        source = str(path)
    try:
        return EvolvdConfig(**data)
    except ValidationError as exc:
        raise ConfigError(errors_from_validation(exc, source, lines, os.environ)) from exc
