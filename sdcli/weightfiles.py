"""Weights files users bring (LoRAs, embeddings): their tensor names and shapes without loading them, and
their tensors loaded safely. ``.safetensors`` headers are read as JSON (no torch); ``.bin``/``.pt`` pickles
only through torch's restricted ``weights_only`` loader unless the user allows unsafe pickles."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from .errors import UsageError, first_line

PICKLES = (".bin", ".pt", ".pth", ".ckpt")
MAX_HEADER = 100 * 1024 * 1024


def shapes(path: Path, where: str, allow_pickle: bool = False) -> dict[str, tuple]:
    """Tensor name -> shape. Nested dicts of a pickle (A1111's ``string_to_param``) are flattened with dots."""
    if path.suffix.lower() == ".safetensors":
        return {k: tuple(v["shape"]) for k, v in read_header(path, where).items() if k != "__metadata__"}
    return {k: tuple(v.shape) for k, v in flat_tensors(load(path, where, allow_pickle)).items()}


def read_header(path: Path, where: str) -> dict[str, Any]:
    """The JSON header of a .safetensors file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= size <= MAX_HEADER:
                raise ValueError("no safetensors header")
            header = json.loads(f.read(size))
            if not isinstance(header, dict):
                raise ValueError("header is not a mapping")
            return header
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: not a readable .safetensors file ({first_line(e)})") from None


def metadata(path: Path, where: str) -> dict[str, str]:
    if path.suffix.lower() != ".safetensors":
        return {}
    meta = read_header(path, where).get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def load(path: Path, where: str, allow_pickle: bool = False) -> dict[str, Any]:
    """The file's tensors (torch). A pickle goes through ``weights_only`` unless ``allow_pickle``."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise UsageError(f"{where}: not a readable .safetensors file ({first_line(e)})") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ...
        if allow_pickle:
            raise UsageError(f"{where}: cannot read it as a weights file ({first_line(e)})") from None
        raise UsageError(f"{where}: this pickle holds more than plain tensors (safe loading refused it: "
                         f"{first_line(e, 120)}); convert it to .safetensors, or pass --allow-unsafe-pickle if you "
                         "trust its source") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: holds a {type(data).__name__}, not a mapping of tensors")
    return data


def flat_tensors(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_tensors(value, name + "."))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            out[name] = value
    return out
