"""Comparing two images a run wrote: identical pixels, or how far apart (0..255)."""

from __future__ import annotations

from pathlib import Path


def sample(outdir: Path) -> Path:
    """The first image sdcli wrote into OUTDIR."""
    return outdir / "samples" / "00000.png"


def compare(a: Path, b: Path) -> dict:
    """Identical pixels? Max absolute difference of two images (0..255)."""
    if not a.is_file() or not b.is_file():
        return {"identical": None, "max_abs_diff": None, "note": f"missing {a.name if not a.is_file() else b.name}"}
    import numpy as np
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        x = np.asarray(ia.convert("RGB"), dtype=np.int16)
        y = np.asarray(ib.convert("RGB"), dtype=np.int16)
    if x.shape != y.shape:
        return {"identical": False, "max_abs_diff": None, "note": f"sizes differ {x.shape} vs {y.shape}"}
    d = np.abs(x - y)
    return {"identical": bool(d.max() == 0), "max_abs_diff": int(d.max()), "mean_abs_diff": round(float(d.mean()), 4)}
