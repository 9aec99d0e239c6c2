"""The admin API's bearer token: where the daemon and its clients find it.

There is always one. An operator sets it (`admin.token_file`, then the variable `admin.token_env`);
without that, the daemon generates one into `<data_dir>/admin.token`, readable by its own user only
(mode 0600), and keeps it across restarts. The CLI reads the same three places in the same order, so
on the daemon's machine `evolvd status` works as the daemon's user and as no other. A token that
only the machine's users could find would not do off loopback: there the daemon refuses to start
without one the operator set (evolvd.app).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from evolvd.config import EvolvdConfig

GENERATED_TOKEN_FILE = "admin.token"  # noqa: S105 - the file's name, not a secret
OWNER_ONLY = 0o600


class AdminTokenError(RuntimeError):
    """A configured token could not be read; the message names the file and why."""


def configured_token(config: EvolvdConfig) -> str | None:
    """The token the operator set, or None."""
    admin = config.admin
    if admin.token_file is not None:
        try:
            token = admin.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminTokenError(f"cannot read admin.token_file {admin.token_file}: {exc.strerror}") from exc
        if not token:
            raise AdminTokenError(f"admin.token_file {admin.token_file} is empty")
        return token
    return os.environ.get(admin.token_env) or None


def daemon_token(config: EvolvdConfig) -> str:
    """The token the daemon checks: the configured one, else the generated one (made on first use)."""
    return configured_token(config) or _generated_token(config.data_dir / GENERATED_TOKEN_FILE)


def client_token(config: EvolvdConfig) -> str | None:
    """The token a client on this machine sends: the configured one, else the daemon's generated one
    if this user can read it."""
    token = configured_token(config)
    if token is not None:
        return token
    try:
        return (config.data_dir / GENERATED_TOKEN_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _generated_token(path: Path) -> str:
    try:
        # O_EXCL: two daemons starting on one data_dir cannot each write their own token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        return _existing_token(path)
    except OSError as exc:
        raise AdminTokenError(f"cannot create {path}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def _existing_token(path: Path) -> str:
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise AdminTokenError(f"{path} is not a regular file; remove it and restart")
        if info.st_mode & 0o077:
            # Readable by others (copied, or the umask of a restore): it cannot be trusted as a secret.
            raise AdminTokenError(
                f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}):"
                f" remove it (a new token is generated) or chmod 600 it"
            )
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminTokenError(f"cannot read {path}: {exc.strerror}") from exc
    if not token:
        raise AdminTokenError(f"{path} is empty: remove it and restart (a new token is generated)")
    return token
