"""Where things are: the repo, the venv's python and sdcli, the reference script; paths as the report shows them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
ROOT = HERE.parent
BIN = Path(sys.executable).parent  # the venv's bin: its python and its sdcli console script
PYTHON = str(BIN / Path(sys.executable).name)
SDCLI = str(BIN / "sdcli")
REFERENCE = str(HERE / "reference.py")


def display_path(p: str) -> str:
    try:
        return os.path.relpath(p, ROOT) if not os.path.relpath(p, ROOT).startswith("../..") else p
    except ValueError:
        return p


def dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
