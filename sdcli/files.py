"""Reading files a user names (prompt files, configs, input images), with one-line errors that name them;
where sdcli keeps its cache."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

from .errors import UsageError


def read_user_file(path: str, name: str, what: str, max_bytes: int, allow_empty: bool = False) -> bytes:
    """The bytes of a regular, readable, non-empty file of at most ``max_bytes``; ``name`` starts every
    error message (e.g. "--from-file x.txt") and ``what`` says what was expected there."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{name}: no such file")
    if not p.is_file():
        raise UsageError(f"{name}: not a regular file; give {what}")
    try:
        if p.stat().st_size > max_bytes:
            raise UsageError(f"{name}: larger than {max_bytes >> 20} MiB; give a smaller file")
        data = p.read_bytes()
    except OSError as e:
        raise UsageError(f"{name}: cannot read it ({e.strerror})") from None
    if not data and not allow_empty:
        raise UsageError(f"{name}: empty file; give {what}")
    return data


def folder_problem(path: Path) -> Optional[str]:
    """Why a folder could not be created (or written) at ``path``, found without creating anything; None if
    it could."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder" if existing == path else f"a part of the path ({existing}) is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "not writable"
    return None


def read_regular(path: Path, max_bytes: int) -> Optional[bytes]:
    """The bytes of a regular file of at most ``max_bytes``, or None for anything else (missing, a folder, a
    FIFO, a device, a symbolic link, too large). Never blocks on open and never reads without bound."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(max_bytes + 1)[:max_bytes]
    except OSError:
        return None
    finally:
        os.close(fd)


def open_own_file(path: Path, flags: int, mode: int, name: str) -> int:
    """Open (or create) a file sdcli keeps in the outdir (manifest, lock): never through a symbolic link, never
    blocking, and only a regular file; anything else is a UsageError naming it."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        why = {errno.ELOOP: "is a symbolic link", errno.EISDIR: "is a folder"}.get(e.errno, f"cannot be opened ({e.strerror})")
        raise UsageError(f"{name} {why}; sdcli writes only its own regular files in the outdir: remove it") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise UsageError(f"{name} is not a regular file; sdcli writes only its own regular files in the outdir: "
                         "remove it")
    return fd


def cache_home() -> Path:
    """sdcli's cache folder: $SDCLI_CACHE, else $XDG_CACHE_HOME/sdcli, else ~/.cache/sdcli."""
    return Path(os.environ.get("SDCLI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "sdcli"))
