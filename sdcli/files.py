"""Reading files a user names (prompt files, configs, input images), with one-line errors that name them."""

from __future__ import annotations

from pathlib import Path

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
