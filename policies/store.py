"""The policies in force, and their hot reload from the operator's policy directory.

A valid edit applies at once and is logged with its content hash and the fields it changed; an
invalid one is rejected with file, line and field while the previous policies stay in force. The
directory is watched with watchfiles (inotify); every evaluation tick also compares file
fingerprints, so an edit the watcher missed (a Kubernetes ConfigMap symlink swap, a network
filesystem) still applies within one tick.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import watchfiles

from evolvd.config_file import ConfigError, FieldError
from evolvd.metrics import PolicyMetrics
from evolvd.policies.audit import Decision
from evolvd.policies.loader import PolicySet, load_policies
from evolvd.policies.weakening import weakenings

logger = logging.getLogger("evolvd.policies")

Fingerprint = tuple[tuple[str, float, int], ...]


def _fingerprint(directory: Path | None) -> Fingerprint:
    if directory is None or not directory.is_dir():
        return ()
    out = []
    for path in sorted(directory.rglob("*")):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            out.append((str(path), stat.st_mtime, stat.st_size))
    return tuple(out)


@functools.cache
def _shipped() -> PolicySet:
    return load_policies(None)


def _vanished(old: PolicySet, new: PolicySet) -> list[FieldError]:
    """An operator's file that was in force and is gone: a rejected edit, never a silent return
    to the shipped defaults (a deploy that lost the file must not loosen every gate it set)."""
    return [
        FieldError(
            old.files[name].source,
            None,
            "",
            "this policy file was in force and is gone; the previous policy stays in force. "
            "To go back to the shipped defaults, leave the file in place with `{}` in it",
        )
        for name, f in new.files.items()
        if f.source == "<default>" and old.files[name].source != "<default>"
    ]


def _changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changes.extend(_changed_fields(before, after, f"{prefix}{key}."))
        elif before != after:
            changes.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return changes


class PolicyStore:
    """Holds the PolicySet in force; `reload()` swaps it only for a fully valid set."""

    def __init__(
        self,
        directory: Path | None,
        metrics: PolicyMetrics | None = None,
        on_decisions: Callable[[list[Decision]], None] | None = None,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.on_decisions = on_decisions
        """Receives the decisions of each reload (applied files, rejected edits) for the audit trail."""
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(directory)
        self._current = load_policies(directory)  # a bad set at startup is a startup error
        self._rejection: list[FieldError] = []
        self._rejected_at: float | None = None
        self._applied_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._publish()
        for name, f in self._current.files.items():
            logger.info("policy %s in force: hash %s from %s", name, f.content_hash, f.source)
        self._warn_disabled_guards()

    @property
    def current(self) -> PolicySet:
        with self._lock:
            return self._current

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "directory": None if self.directory is None else str(self.directory),
                "in_force": self._current.describe(),
                "applied_at": self._applied_at,
                "rejected": [str(e) for e in self._rejection],
                "rejected_at": self._rejected_at,
                "weaker_than_shipped": self._weaker_than_shipped(self._current),
            }

    @staticmethod
    def _weaker_than_shipped(policies: PolicySet) -> dict[str, list[str]]:
        """Per policy, every gate the operator's files set looser than the shipped defaults."""
        shipped = _shipped()
        found = {
            name: weakenings(
                name, shipped.files[name].policy.model_dump(mode="json"), f.policy.model_dump(mode="json")
            )
            for name, f in policies.files.items()
            if f.source != "<default>"
        }
        return {name: lines for name, lines in found.items() if lines}

    def reload(self) -> str:
        """Re-read the directory: `applied`, `rejected` or `unchanged`."""
        self._fingerprint = _fingerprint(self.directory)
        try:
            candidate = load_policies(self.directory)
        except ConfigError as exc:
            return self._reject(exc.errors)
        vanished = _vanished(self._current, candidate)
        if vanished:
            return self._reject(vanished)
        with self._lock:
            old = self._current
            changed = {
                n: f for n, f in candidate.files.items() if f.content_hash != old.files[n].content_hash
            }
            was_rejected = bool(self._rejection)
            self._current, self._rejection, self._rejected_at = candidate, [], None
            if changed:
                self._applied_at = time.time()
        self._publish()
        if not changed:
            if was_rejected:
                logger.info("policy files are valid again; the policies in force did not change")
            self._count("unchanged")
            return "unchanged"
        decisions = []
        for name, f in changed.items():
            before, after = old.files[name].policy.model_dump(mode="json"), f.policy.model_dump(mode="json")
            fields = _changed_fields(before, after)
            weakened = weakenings(name, before, after)
            if weakened:
                logger.warning("policy %s from %s WEAKENS: %s", name, f.source, "; ".join(weakened))
            logger.warning(
                "policy %s applied: hash %s -> %s from %s; changed %s",
                name,
                old.files[name].content_hash,
                f.content_hash,
                f.source,
                "; ".join(fields),
            )
            decisions.append(
                Decision(
                    name,
                    f.content_hash,
                    "policy_file",
                    f.source,
                    "applied",
                    (*fields, *(f"weakens {w}" for w in weakened)),
                    {"previous_hash": old.files[name].content_hash, "weakened": weakened},
                )
            )
        self._warn_disabled_guards()
        self._count("applied")
        self._emit(decisions)
        return "applied"

    def poll(self) -> str | None:
        """Reload when a file changed since the last read (the watcher's safety net)."""
        if _fingerprint(self.directory) == self._fingerprint:
            return None
        return self.reload()

    def _reject(self, errors: list[FieldError]) -> str:
        with self._lock:
            self._rejection, self._rejected_at = errors, time.time()
            in_force = self._current
        self._publish()
        for error in errors:
            logger.error("policy edit rejected, previous policy stays in force: %s", error)
        self._count("rejected")
        decisions = [
            Decision(
                "policy_file",
                "+".join(in_force.hash_of(n) for n in in_force.files),
                "policy_file",
                error.source,
                "rejected",
                (str(error),),
                {"line": error.line, "field": error.path},
            )
            for error in errors
        ]
        self._emit(decisions)
        return "rejected"

    def _publish(self) -> None:
        if self.metrics is None:
            return
        with self._lock:
            self.metrics.rejected.set(1 if self._rejection else 0)
            self.metrics.in_force.clear()
            for name, f in self._current.files.items():
                self.metrics.in_force.labels(name, f.content_hash).set(1)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reloads.labels(outcome).inc()

    def _emit(self, decisions: list[Decision]) -> None:
        if self.on_decisions is not None and decisions:
            try:
                self.on_decisions(decisions)
            except Exception:
                logger.exception("could not record the policy reload in the audit trail")

    def _warn_disabled_guards(self) -> None:
        policies = self._current
        if not policies.drift.guard.enabled:
            logger.warning(
                "drift guard is DISABLED by %s: drift will not block training", policies.files["drift"].source
            )
        if not policies.promotion.require_safety_probes:
            logger.warning(
                "safety probes are NOT required for promotion by %s", policies.files["promotion"].source
            )

    # --- watching ----------------------------------------------------------------------------

    def start_watching(self) -> None:
        if self.directory is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="evolvd-policy-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        assert self.directory is not None
        while not self._stop.is_set():
            try:
                for _changes in watchfiles.watch(
                    self.directory,
                    stop_event=self._stop,
                    debounce=200,
                    rust_timeout=1000,
                    raise_interrupt=False,
                ):
                    self.reload()
            except Exception:  # a vanished directory, an inotify limit: keep polling via poll()
                logger.exception("policy directory watch failed; retrying in 5 s")
                self._stop.wait(5)
