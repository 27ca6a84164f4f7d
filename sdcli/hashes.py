"""The sha256 of a model's weights (A1111's ``Model hash`` is its first 10 hex digits), computed once per
file and cached by path, size and modification time in ``<cache>/model-hashes.json``: a 4 GB checkpoint is
read once, not on every run.

Which file: a single-file checkpoint itself; for a diffusers folder (or a hub model in the cache) its
UNet weights (``unet/diffusion_pytorch_model[.VARIANT].safetensors``, else ``.bin``; a sharded UNet: its
shards in order, hashed as one stream).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from .files import cache_home

CACHE_NAME = "model-hashes.json"
UNET_WEIGHTS = "diffusion_pytorch_model"
CHUNK = 1 << 20


def weights_files(folder: Path, variant: Optional[str] = None, part: str = "unet") -> list[Path]:
    """The weights of a diffusers folder's ``part`` (its UNet unless told; several files if sharded), or []
    if there are none."""
    unet = Path(folder) / part
    stems = ([f"{UNET_WEIGHTS}.{variant}"] if variant else []) + [UNET_WEIGHTS]
    for ext in ("safetensors", "bin"):
        for stem in stems:
            if (unet / f"{stem}.{ext}").is_file():
                return [unet / f"{stem}.{ext}"]
            index = unet / f"{stem}.{ext}.index.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError):
                    continue
                return [unet / s for s in shards]
        others = sorted(unet.glob(f"{UNET_WEIGHTS}*.{ext}")) if unet.is_dir() else []
        if others:  # only a variant (e.g. fp16) is there
            return others[:1]
    return []


def source_files(source, variant: Optional[str] = None, part: str = "unet") -> list[Path]:
    """The weights files of a ``models.Source``'s ``part`` (a single file: all of it; a hub model: from the
    local cache only)."""
    if source.kind == "single_file":
        return [Path(source.location)]
    if source.kind == "folder":
        return weights_files(Path(source.location), variant, part)
    if source.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(source.location, local_files_only=True,
                                       allow_patterns=["model_index.json", f"{part}/*"])
        except Exception:  # not cached: no hash rather than a download
            return []
        return weights_files(Path(folder), variant, part)
    return []


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def digest(files: list[Path], addnet: bool = False) -> str:
    """The sha256 of the files' bytes one after the other, read now (no cache)."""
    sha = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            if addnet:
                fh.seek(8 + int.from_bytes(fh.read(8), "little"))
            while chunk := fh.read(CHUNK):
                sha.update(chunk)
    return sha.hexdigest()


def files_sha256(files: list[Path], cache: Optional[Path] = None, addnet: bool = False) -> str:
    """The sha256 of the files' bytes one after the other; from the cache if no file changed since.
    ``addnet``: A1111's hash of a LoRA .safetensors ("addnet hash"): its bytes after the JSON header."""
    cache = cache or cache_home() / CACHE_NAME
    key = ("addnet\n" if addnet else "") + "\n".join(str(Path(f).resolve()) for f in files)
    stamps = [_stamp(f) for f in files]
    entry = _read_cache(cache).get(key)
    if isinstance(entry, dict) and entry.get("stamps") == stamps and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    sha = digest(files, addnet)
    try:
        from .outputs import write_exact

        cache.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(cache), key: {"stamps": stamps, "sha256": sha}}
        write_exact(cache, json.dumps(data, indent=0, sort_keys=True).encode("utf-8"))
    except OSError:  # a read-only cache: hash again next time
        pass
    return sha


def file_sha256(path: Path, addnet: bool = False) -> str:
    """One file's sha256 (cached as the models' are)."""
    return files_sha256([Path(path)], addnet=addnet)


def model_sha256(source, variant: Optional[str] = None) -> Optional[str]:
    """The sha256 of a model source's weights, or None when there is no weights file to hash."""
    files = source_files(source, variant)
    if not files:
        return None
    try:
        return files_sha256(files)
    except OSError:
        return None
