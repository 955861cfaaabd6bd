"""The Verilator model cache: one folder per distinct model, pruned by size.

A gsc-cs model folder takes about 150 MB, so the cache keeps the most
recently used folders within a size limit: ``$COSPARSE_VERILATOR_CACHE_GB``
(gigabytes, default :data:`DEFAULT_LIMIT_GB`). A folder's use time is the
modification time of its ``.used`` stamp, written on every use.

Two locks guard a folder: ``.lock``, held exclusively while the model is
built, and ``.inuse``, held shared while it runs. A folder is removed only
when both can be taken at once (no process builds or runs it); it is first
renamed away, and a process that locked the old folder's file sees that the
file is no longer at its path and starts over.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["DEFAULT_LIMIT_GB", "cache_limit_bytes", "mark_used", "folder_bytes", "prune",
           "locked"]

#: Size limit of the cache when ``$COSPARSE_VERILATOR_CACHE_GB`` is not set.
DEFAULT_LIMIT_GB = 4.0

_ENV = "COSPARSE_VERILATOR_CACHE_GB"


def cache_limit_bytes() -> int:
    """The cache's size limit in bytes, from ``$COSPARSE_VERILATOR_CACHE_GB``."""
    raw = os.environ.get(_ENV, "")
    try:
        gb = float(raw) if raw.strip() else DEFAULT_LIMIT_GB
    except ValueError:
        raise ValueError(f"{_ENV}={raw!r} is not a number of gigabytes") from None
    if gb < 0:
        raise ValueError(f"{_ENV}={raw!r} is negative")
    return int(gb * 1e9)


def mark_used(folder: Path) -> None:
    """Record that ``folder``'s model was used now."""
    (Path(folder) / ".used").touch()


def _last_used(folder: Path) -> float:
    for stamp in (folder / ".used", folder):
        try:
            return stamp.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symbolic links not followed)."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


def prune(root: Path, limit: int | None = None, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used model folders of ``root`` until it fits ``limit``.

    Parameters
    ----------
    root : Path
        The cache folder; each subfolder is one model.
    limit : int, optional
        Bytes (default :func:`cache_limit_bytes`).
    keep : Path, optional
        A folder never removed (the model about to be used).

    Returns
    -------
    list of Path
        The folders removed, oldest first. A folder whose lock another
        process holds is skipped.
    """
    root = Path(root)
    limit = cache_limit_bytes() if limit is None else limit
    if not root.is_dir():
        return []
    keep = Path(keep).resolve() if keep is not None else None
    folders = [f for f in root.iterdir() if f.is_dir() and not f.is_symlink()]
    sizes = {f: folder_bytes(f) for f in folders}
    total = sum(sizes.values())
    removed = []
    for folder in sorted(folders, key=_last_used):
        if total <= limit:
            break
        if keep is not None and folder.resolve() == keep:
            continue
        if _remove_unless_locked(folder):
            total -= sizes[folder]
            removed.append(folder)
    return removed


@contextmanager
def locked(folder: Path, name: str = ".lock", *, shared: bool = False) -> Iterator[None]:
    """Hold the lock file ``name`` of ``folder`` (created with the folder if missing).

    A lock whose file was renamed away by :func:`prune` while this process
    waited for it is let go and taken again on the new folder.
    """
    folder = Path(folder)
    while True:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / name, "a")
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            if os.fstat(f.fileno()).st_ino == os.stat(folder / name).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        f.close()


def _try_lock(path: Path):
    try:
        f = open(path, "a")
    except OSError:
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _remove_unless_locked(folder: Path) -> bool:
    build = _try_lock(folder / ".lock")
    if build is None:
        return False  # being built
    with build:
        use = _try_lock(folder / ".inuse")
        if use is None:
            return False  # being run
        with use:
            trash = folder.with_name(f".pruned-{folder.name}-{uuid.uuid4().hex[:8]}")
            try:
                folder.rename(trash)
            except OSError:
                return False
    shutil.rmtree(trash, ignore_errors=True)
    return True
