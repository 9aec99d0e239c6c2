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

from evolvd.config import EvolvdConfig
from evolvd.secret_file import SecretFileError, owner_only_secret

GENERATED_TOKEN_FILE = "admin.token"  # noqa: S105 - the file's name, not a secret


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
    if (token := configured_token(config)) is not None:
        return token
    try:
        return owner_only_secret(config.data_dir / GENERATED_TOKEN_FILE)
    except SecretFileError as exc:
        raise AdminTokenError(str(exc)) from exc


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
