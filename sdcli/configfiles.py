"""Config files: presets shipped in configs/, reading a YAML file (bounded, literal), recognising an
original LDM inference YAML, and writing a config back as YAML (``sdcli config show``)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from . import textfiles
from .errors import UsageError, suggest
from .files import read_user_file


def is_ldm_config(data: Any) -> bool:
    """An original LDM/CompVis inference YAML (model: {target: ..., params: ...})."""
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "target" in data["model"]


def read_yaml(path: str) -> Any:
    name = f"--config {path}"
    raw = read_user_file(path, name, "a YAML file", 16 * 1024 * 1024, allow_empty=True)
    return textfiles.load_yaml(textfiles.decode(raw, name), name)


def presets_dir() -> Path:
    """Presets shipped in configs/: the source tree's, or the installed copy in <prefix>/share/sdcli."""
    import sys

    source = Path(__file__).parent.parent / "configs"
    return source if source.is_dir() else Path(sys.prefix) / "share" / "sdcli" / "configs"


def find_config(name: str) -> str:
    """A --config value: a path, or the name of a shipped preset (``sd15`` -> configs/sd15.yaml)."""
    if "/" in name or os.sep in name or name.endswith((".yaml", ".yml")):
        return name
    preset = presets_dir() / f"{name}.yaml"
    if preset.is_file():
        return str(preset)
    if Path(name).is_file():
        return name
    names = sorted(p.stem for p in presets_dir().glob("*.yaml"))
    raise UsageError(f"--config {name}: no such file or preset{suggest(name, names)}; presets: {', '.join(names)}")


def to_yaml(cfg) -> str:
    """A RunConfig as YAML (flat scalars: strings in JSON's double-quoted form, which YAML reads the same).
    Written by hand so that `sdcli config show` needs no YAML library import (start-up time)."""
    import json

    def scalar(v: Any) -> str:
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        # JSON's escapes are YAML's; escape too what YAML reads as line breaks or refuses as non-printable.
        return re.sub("[\x7f-\x9f\u2028\u2029\ufeff]", lambda m: f"\\u{ord(m.group()):04x}",
                      json.dumps(v, ensure_ascii=False))

    return "".join(f"{k}: {scalar(v)}\n" for k, v in dataclasses.asdict(cfg).items())
