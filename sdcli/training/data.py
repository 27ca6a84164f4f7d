"""The training images: a folder of .png/.jpg/.webp files, each with an optional caption beside it (x.txt for
x.png), checked before any model loads; brought to the training size (shorter side scaled, centre crop)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UsageError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_IMAGES = 10_000


@dataclass(frozen=True)
class Example:
    path: Path
    caption: Optional[str]  # from x.txt, or None: the templates give it
    size: tuple[int, int]


def find(folder: str, resolution: int) -> list[Example]:
    """Every image of ``folder`` (sorted by name) with its caption; one clear error for anything unusable."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(f"--images {folder}: no such folder; give a folder of .png/.jpg/.webp images")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not paths:
        raise UsageError(f"--images {folder}: holds no .png, .jpg or .webp images")
    if len(paths) > MAX_IMAGES:
        raise UsageError(f"--images {folder}: {len(paths)} images, more than {MAX_IMAGES}")
    examples = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                size = im.size
        except (UnidentifiedImageError, OSError) as e:
            raise UsageError(f"--images {folder}: {p.name} is not a readable image ({type(e).__name__}); "
                             "remove it or replace it") from None
        if min(size) < resolution:
            raise UsageError(f"--images {folder}: {p.name} is {size[0]}x{size[1]}, smaller than the training size "
                             f"{resolution}; use images of at least {resolution}x{resolution} or --resolution "
                             f"{max(8, min(size) // 8 * 8)}")
        caption = None
        text = p.with_suffix(".txt")
        if text.is_file():
            caption = text.read_text(encoding="utf-8", errors="replace").strip() or None
        examples.append(Example(p, caption, size))
    return examples


def fingerprint(examples: list[Example]) -> str:
    """Which images and captions a training saw (a checkpoint of other images is not resumed)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.path.name.encode() + b"\0" + hashlib.sha256(e.path.read_bytes()).digest() + (e.caption or "").encode())
    return h.hexdigest()[:16]


def load(example: Example, resolution: int):
    """The image as RGB at resolution x resolution: the shorter side scaled to it, then centre-cropped."""
    from PIL import Image

    with Image.open(example.path) as im:
        im = im.convert("RGB")
    w, h = im.size
    scale = resolution / min(w, h)
    im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = im.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return im.crop((left, top, left + resolution, top + resolution))


def caption_for(example: Example, templates: list[str], token: Optional[str], pick: int) -> str:
    """The caption of one training step: the image's own x.txt, else template ``pick`` (mod their count);
    ``{token}`` becomes the token."""
    text = example.caption if example.caption is not None else templates[pick % len(templates)]
    return text.replace("{token}", token) if token else text
