"""Deterministic prompt-adherence checker for the demo world (no learned model).

``measure(image)`` reads the attributes off a picture: background colour (median of the border ring),
foreground colour (median of the pixels far from the background), shape class (extent and solidity of the
largest foreground blob), size (bounding-box extent) and position (bounding-box centre).
``check(image, prompt)`` scores 1/0 for each attribute the prompt names.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from . import world

_NAMES = list(world.COLORS)
_LAB = cv2.cvtColor(np.array([list(world.COLORS.values())], np.uint8), cv2.COLOR_RGB2LAB)[0].astype(np.float32)


def nearest_color(rgb) -> str:
    """Nearest named colour in CIELAB (8-bit OpenCV scale)."""
    lab = cv2.cvtColor(np.array([[rgb]], np.uint8), cv2.COLOR_RGB2LAB)[0, 0].astype(np.float32)
    return _NAMES[int(np.argmin(((_LAB - lab) ** 2).sum(1)))]


def _shape_class(blob: np.ndarray) -> tuple[str, float, float]:
    contours, _ = cv2.findContours(blob.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=cv2.contourArea)
    area = float(blob.sum())
    x, y, w, h = cv2.boundingRect(c)
    hull = cv2.contourArea(cv2.convexHull(c)) + 0.5 * cv2.arcLength(cv2.convexHull(c), True)
    extent, solidity = area / (w * h), min(1.0, area / max(hull, 1.0))
    if solidity < 0.8:
        name = "star"
    elif extent > 0.88:
        name = "square"
    elif extent > 0.66:
        name = "circle"
    else:
        name = "triangle"
    return name, extent, solidity


def measure(image: Image.Image) -> dict:
    """Attributes read off an image (any size; resized to the world's 64 px)."""
    img = np.asarray(image.convert("RGB").resize((world.SIZE, world.SIZE), Image.BILINEAR)).astype(np.float32)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    out = {"bg": nearest_color(bg_rgb)}
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    fg = (dist > max(40.0, 0.5 * float(np.percentile(dist, 99.5)))).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n <= 1 or stats[1:, cv2.CC_STAT_AREA].max() < 6:
        return out  # no foreground object
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    blob = labels == k
    core = cv2.erode(blob.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    pix = img[core] if core.sum() >= 4 else img[blob]
    out["color"] = nearest_color(np.median(pix, axis=0))
    out["shape"], out["extent"], out["solidity"] = _shape_class(blob)
    x, y, w, h = (int(v) for v in stats[k, :4])
    ext = max(w, h)
    out["size"] = "small" if ext < 19.5 else "medium" if ext < 30.5 else "large"
    cx, cy = x + w / 2, y + h / 2
    half = world.SIZE / 2

    def third(v: float) -> int:
        return -1 if v < half - 5 else 1 if v > half + 5 else 0

    col, row = third(cx), third(cy)
    out["pos"] = next(p for p, cr in world.POSITIONS.items() if cr == (col, row))
    out["bbox"] = (x, y, w, h)
    return out


ATTRS = ["bg", "color", "shape", "size", "pos"]


def check(image: Image.Image, prompt: str) -> dict:
    """{attribute: 1 or 0} for each attribute the prompt names."""
    want = world.parse_prompt(prompt)
    got = measure(image)
    return {a: int(got.get(a) == want[a]) for a in ATTRS if a in want}


def summarize(scores: list[dict]) -> dict:
    """Per-attribute accuracy over a list of ``check`` results, plus "all" (every named attribute right)."""
    out = {}
    for a in ATTRS:
        vals = [s[a] for s in scores if a in s]
        if vals:
            out[a] = sum(vals) / len(vals)
    out["all"] = sum(all(s.values()) for s in scores) / max(1, len(scores))
    return out


if __name__ == "__main__":  # self-test on the renderer's own images
    import random
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rng = random.Random(0)
    results, fails = [], []
    for i in range(n):
        s = world.sample_scene(rng, "any")
        p = world.prompt(s)
        r = check(world.render(s)[0], p)
        results.append(r)
        if not all(r.values()):
            fails.append((p, measure(world.render(s)[0])))
    print({k: round(v, 4) for k, v in summarize(results).items()}, f"on {n} rendered scenes")
    for f in fails[:10]:
        print("FAIL", f)
