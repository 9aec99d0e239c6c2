"""A secret the daemon generates once into its data_dir, readable by its own user only.

Used for what needs a secret when the operator set none: the admin API's bearer token
(evolvd.admin_token) and the managed vLLM server's API key (evolvd.serving.vllm_key). The file is
made with O_EXCL and mode 0600, so two daemons starting on one data_dir cannot each write their
own, and a file that other users can read (copied, or restored under a loose umask) is refused.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

OWNER_ONLY = 0o600


class SecretFileError(RuntimeError):
    """The secret file cannot be used; the message names the file, why, and what to do."""


def owner_only_secret(path: Path) -> str:
    """The secret in `path`, generated (32 random bytes, URL-safe) when the file does not exist."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY)
    except FileExistsError:
        return read_owner_only_secret(path)
    except OSError as exc:
        raise SecretFileError(f"cannot create {path}: {exc.strerror}") from exc
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return secret


def read_owner_only_secret(path: Path) -> str:
    """The secret in an existing file that only its owner can read."""
    try:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(f"{path} is not a regular file; remove it and restart")
        if info.st_mode & 0o077:
            # Readable by others: it cannot be trusted as a secret any more.
            raise SecretFileError(
                f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):o}):"
                f" remove it (a new one is generated) or chmod 600 it"
            )
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read {path}: {exc.strerror}") from exc
    if not secret:
        raise SecretFileError(f"{path} is empty: remove it and restart (a new one is generated)")
    return secret
