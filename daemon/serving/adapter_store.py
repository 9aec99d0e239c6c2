"""The daemon's own copies of registered adapters, in `<data_dir>/adapters/<name>/`.

An adapter is served from the folder it was registered from only if nobody can change that folder
afterwards: a training run's output folder is retention's to delete, and an operator's folder is
anyone's with write access to it. So registration copies the folder here (real files only: a
symbolic link could point anywhere, now or later), checks the copy, and the registry names the
copy; every load checks the copy's weights against the hash recorded at registration
(evolvd.serving.hotswap).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from evolvd.adapter_folder import AdapterRejectedError

STAGING_PREFIX = ".incoming-"


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{STAGING_PREFIX}*"):  # a copy a crash interrupted
            shutil.rmtree(leftover, ignore_errors=True)

    def stage(self, source: Path) -> Path:
        """Copy `source` into a private staging folder; returns the copy. Raises AdapterRejectedError
        for a missing folder or one with symbolic links (in the copy too: a file swapped for a link
        between the first look and the copy)."""
        if not source.is_dir() or source.is_symlink():
            raise AdapterRejectedError(f"adapter folder {source} does not exist or is a symbolic link")
        _refuse_links(source)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        copy = staging / source.name  # the checks' messages name the folder the operator gave
        try:
            shutil.copytree(source, copy, symlinks=True)  # links copied as links, never followed
            _refuse_links(copy)
        except (OSError, AdapterRejectedError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(exc, AdapterRejectedError):
                raise
            raise AdapterRejectedError(f"could not copy adapter folder {source}: {exc}") from exc
        return copy

    def keep(self, staged: Path, name: str) -> Path:
        """Move a staged copy to its permanent place under `name`; returns that folder."""
        target = self.root / name
        if target.exists():  # a copy whose registration a crash cut short: it was never served
            shutil.rmtree(target)
        staged.rename(target)
        staged.parent.rmdir()
        return target

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged.parent, ignore_errors=True)


def _refuse_links(folder: Path) -> None:
    for entry in folder.rglob("*"):
        if entry.is_symlink():
            raise AdapterRejectedError(
                f"adapter {folder.name}: {entry.relative_to(folder)} is a symbolic link;"
                " registration copies real files only"
            )


def check_import_path(path: Path, root: Path) -> None:
    """An operator's registration (POST /adapters) may only name a folder under `root`."""
    if path.is_symlink():
        raise AdapterRejectedError(f"adapter folder {path} is a symbolic link")
    resolved, allowed = path.resolve(), root.resolve()
    if not resolved.is_relative_to(allowed):
        raise AdapterRejectedError(
            f"adapter folder {resolved} is outside serving.adapter_import_root {allowed}:"
            " copy it there, or point the setting at its folder"
        )
