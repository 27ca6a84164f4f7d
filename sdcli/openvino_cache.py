"""The cache of converted OpenVINO models: ``<cache>/openvino/<key>/`` (``$SDCLI_CACHE``, else
``$XDG_CACHE_HOME/sdcli``, else ``~/.cache/sdcli``) holding ``<part>.xml``, ``<part>.bin`` and ``meta.json``.

- The key is a hash of what the converted graph depends on (openvino_backend.py: the weights' sha256, the
  module's config, the fused LoRAs, the versions of openvino, torch and diffusers, this format).
- An entry is written into a temporary folder and renamed into place, so concurrent runs and a killed one
  never leave half an entry; the first of two concurrent writers wins, the other uses its entry.
- ``meta.json`` lists every file with its size and sha256; an entry that does not match (truncated, changed,
  half-deleted) is reported as damaged, removed and converted again. The sha256 is cached by size and mtime
  (hashes.py), so checking a good entry costs a stat.

No openvino import here: the caller writes the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from . import hashes
from .files import cache_home
from .outputs import host_tag

FORMAT = 1  # bump when the layout of an entry changes
TMP = ".tmp-"
STALE_AFTER = 24 * 3600.0  # a temporary folder of another machine is left alone this long


def root() -> Path:
    return cache_home() / "openvino"


def key_of(fields: dict) -> str:
    """The entry name for what a conversion depends on."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def lookup(key: str, part: str) -> tuple[Optional[Path], Optional[str]]:
    """(the entry's ``<part>.xml``, None) when a good entry is there; (None, None) when there is none;
    (None, why) when it is damaged."""
    folder = root() / key
    if not folder.exists():
        return None, None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, "meta.json is missing or unreadable"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("part") != part \
            or not isinstance(meta.get("files"), dict) or f"{part}.xml" not in meta["files"]:
        return None, "meta.json does not describe this entry"
    for name, want in meta["files"].items():
        path = folder / name
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size != want.get("size"):
                return None, f"{name} is missing or has the wrong size"
            if hashes.files_sha256([path]) != want.get("sha256"):
                return None, f"{name} has changed (sha256)"
        except (OSError, AttributeError):
            return None, f"{name} cannot be read"
    return folder / f"{part}.xml", None


def store(key: str, part: str, write: Callable[[Path], dict]) -> Path:
    """Write an entry: ``write(folder)`` saves ``<part>.xml``/``.bin`` into a temporary folder and returns
    what meta.json should also hold; then the folder is renamed into place. Returns the entry's ``.xml``
    (another process's if it stored the same key first). OSError: the cache cannot be written."""
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    remove_stale(base)
    tmp = base / f"{TMP}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        extra = write(tmp)
        files = {p.name: {"size": p.stat().st_size, "sha256": hashes.digest([p])}
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {**extra, "format": FORMAT, "part": part, "key": key, "files": files}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        try:
            os.rename(tmp, base / key)
        except OSError:
            if not (base / key / "meta.json").is_file():  # not another writer's complete entry: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return base / key / f"{part}.xml"


def discard(key: str) -> None:
    """Remove a damaged entry: renamed away first (atomic), so no reader sees it half-deleted."""
    folder = root() / key
    trash = root() / f"{TMP}{host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
    with contextlib.suppress(OSError):
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale(base: Path) -> None:
    """Temporary folders of conversions that died (this machine: the process is gone; others: after a day)."""
    from .manifest import _alive

    try:
        names = [n for n in os.listdir(base) if n.startswith(TMP)]
    except OSError:
        return
    here, now = host_tag(), time.time()
    for name in names:
        host, pid = (name[len(TMP):].split("-", 2) + ["", ""])[:2]
        with contextlib.suppress(OSError):
            if (host == here and pid.isdigit() and not _alive(int(pid))) \
                    or now - os.lstat(base / name).st_mtime > STALE_AFTER:
                shutil.rmtree(base / name, ignore_errors=True)

