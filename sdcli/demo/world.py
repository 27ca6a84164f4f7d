"""The synthetic world of the demo models: one shape, one colour, one background.

Scenes are dicts ``{"shape", "color", "bg", "size", "pos"}`` plus a small integer jitter. Everything is
deterministic given a seed. ``render`` returns the RGB image, a depth map (shape near = white, background
far = black) and the shape mask, all 64x64 by default, drawn at 4x and downsampled (anti-aliased).
"""

from __future__ import annotations

import hashlib
import math
import random
import re

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 225, 30),
    "orange": (250, 140, 20),
    "purple": (130, 40, 170),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "pink": (250, 140, 200),
    "cyan": (40, 215, 225),
}
SHAPES = ["circle", "square", "triangle", "star"]
SIZES = {"small": 7, "medium": 12, "large": 18}  # half-extent in pixels at 64 px
POSITIONS = {  # (column, row), each in -1, 0, 1
    "top left": (-1, -1), "top": (0, -1), "top right": (1, -1),
    "left": (-1, 0), "center": (0, 0), "right": (1, 0),
    "bottom left": (-1, 1), "bottom": (0, 1), "bottom right": (1, 1),
}
MARGIN = 4  # pixels between a shape at a side position and the image border
EDIT_WORDS = ["make", "the", "change", "to", "turn", "it", "into"]
VOCAB = sorted(set(["a", "an", "on", "background"] + list(COLORS) + SHAPES + list(SIZES)
                   + [w for p in POSITIONS for w in p.split()] + EDIT_WORDS))


def is_held_out(color: str, shape: str, bg: str) -> bool:
    """About 10% of (colour, shape, background) triples never appear in training (hash rule)."""
    h = hashlib.sha256(f"{color}|{shape}|{bg}".encode()).digest()
    return h[0] < 26


def center_of(size: str, pos: str, res: int = SIZE) -> tuple[float, float]:
    """Pixel centre of a shape of this size at this position (before jitter)."""
    r = SIZES[size] * res / SIZE
    off = res / 2 - r - MARGIN * res / SIZE  # distance from the image centre to a side position
    col, row = POSITIONS[pos]
    return res / 2 + col * off, res / 2 + row * off


def sample_scene(rng: random.Random, split: str = "train") -> dict:
    """One random scene; ``split`` is "train" (held-out triples excluded), "heldout" (only those) or "any"."""
    while True:
        color, bg = rng.sample(list(COLORS), 2)
        shape = rng.choice(SHAPES)
        held = is_held_out(color, shape, bg)
        if split == "any" or held == (split == "heldout"):
            break
    return {"shape": shape, "color": color, "bg": bg, "size": rng.choice(list(SIZES)),
            "pos": rng.choice(list(POSITIONS)), "jitter": (rng.randint(-1, 1), rng.randint(-1, 1))}


def scenes(seed: int, n: int, split: str = "train") -> list[dict]:
    rng = random.Random(seed)
    return [sample_scene(rng, split) for _ in range(n)]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.9
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.1 * r + rad * math.sin(a)))
        return pts
    return None  # circle


def render(scene: dict, res: int = SIZE) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """(RGB image, depth map as an "L" image, boolean mask) of a scene at ``res`` pixels."""
    k = 4
    big = res * k
    cx, cy = center_of(scene["size"], scene["pos"], res)
    jx, jy = scene.get("jitter", (0, 0))
    cx, cy, r = (cx + jx * res / SIZE) * k, (cy + jy * res / SIZE) * k, SIZES[scene["size"]] * res / SIZE * k
    img = Image.new("RGB", (big, big), COLORS[scene["bg"]])
    mask = Image.new("L", (big, big), 0)
    poly = _polygon(scene["shape"], cx, cy, r)
    for canvas, fill in ((ImageDraw.Draw(img), COLORS[scene["color"]]), (ImageDraw.Draw(mask), 255)):
        if poly is None:
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            canvas.polygon(poly, fill=fill)
    img = img.resize((res, res), Image.BOX)
    depth = mask.resize((res, res), Image.BOX)
    return img, depth, np.asarray(depth) >= 128


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt(scene: dict, with_size: bool = True, with_pos: bool = True) -> str:
    """"a small red circle on a blue background, top left"; size and position are optional."""
    first = scene["size"] if with_size else scene["color"]
    words = f"{first} {scene['color']}" if with_size else scene["color"]
    text = f"{article(first)} {words} {scene['shape']} on {article(scene['bg'])} {scene['bg']} background"
    return f"{text}, {scene['pos']}" if with_pos else text


_PROMPT_RE = re.compile(
    r"^an? (?:(?P<size>%s) )?(?P<color>%s) (?P<shape>%s) on an? (?P<bg>%s) background(?:, (?P<pos>%s))?$" % (
        "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES), "|".join(COLORS),
        "|".join(sorted(POSITIONS, key=len, reverse=True))))


def parse_prompt(text: str) -> dict:
    """Text -> attributes present in it (keys among shape, color, bg, size, pos). Raises ValueError."""
    m = _PROMPT_RE.match(" ".join(text.lower().strip().split()))
    if not m:
        raise ValueError(f"not a prompt of this world: {text!r}")
    return {k: v for k, v in m.groupdict().items() if v is not None}


def random_prompt(rng: random.Random, scene: dict, p_size: float = 0.7, p_pos: float = 0.7) -> str:
    """A training caption: size and position each left out with some probability."""
    return prompt(scene, rng.random() < p_size, rng.random() < p_pos)


def edit_pair(rng: random.Random, split: str = "train") -> tuple[dict, str, dict]:
    """(source scene, instruction, target scene) for InstructPix2Pix: recolour, new background or new shape."""
    while True:
        src = sample_scene(rng, split)
        tgt = dict(src)
        kind = rng.randrange(3)
        if kind == 0:
            tgt["color"] = rng.choice([c for c in COLORS if c not in (src["color"], src["bg"])])
            text = f"make the {src['shape']} {tgt['color']}"
        elif kind == 1:
            tgt["bg"] = rng.choice([c for c in COLORS if c not in (src["color"], src["bg"])])
            text = f"change the background to {tgt['bg']}"
        else:
            tgt["shape"] = rng.choice([s for s in SHAPES if s != src["shape"]])
            text = f"turn it into {article(tgt['shape'])} {tgt['shape']}"
        held = is_held_out(tgt["color"], tgt["shape"], tgt["bg"])
        if split == "any" or held == (split == "heldout"):
            return src, text, tgt


def heldout_prompts(n: int = 120, seed: int = 12345) -> list[tuple[str, dict]]:
    """A fixed evaluation set: prompts of held-out (colour, shape, background) triples."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = sample_scene(rng, "heldout")
        out.append((prompt(s, with_size=i % 3 != 2, with_pos=i % 4 != 3), s))
    return out


def _box(x0: int, y0: int, x1: int, y1: int, res: int = SIZE) -> np.ndarray:
    m = np.zeros((res, res), bool)
    m[max(0, y0):min(res, y1), max(0, x0):min(res, x1)] = True
    return m


def inpaint_example(rng: random.Random, split: str = "train") -> tuple[dict, np.ndarray, Image.Image, Image.Image]:
    """(scene the prompt describes, mask, source image, target image) for an inpainting model.

    Masks: a half of the image, a random rectangle, a box around the shape, or everything. Half of the time the
    prompt asks for something new inside the mask (another background colour; with a box around the shape also
    another shape colour or shape): the target is then the source outside the mask and the new scene inside,
    so the model learns to follow the prompt where it paints and to keep what it sees elsewhere."""
    src = sample_scene(rng, split)
    kind = rng.choices(range(4), weights=(3, 3, 3, 1))[0]
    h = SIZE // 2
    if kind == 0:
        m = [_box(0, 0, h, SIZE), _box(h, 0, SIZE, SIZE), _box(0, 0, SIZE, h), _box(0, h, SIZE, SIZE)][rng.randrange(4)]
    elif kind == 1:
        w, hh = rng.randrange(16, 49), rng.randrange(16, 49)
        x, y = rng.randrange(0, SIZE - w + 1), rng.randrange(0, SIZE - hh + 1)
        m = _box(x, y, x + w, y + hh)
    elif kind == 2:
        ys, xs = np.nonzero(render(src)[2])
        pad = rng.randrange(2, 7)
        m = _box(xs.min() - pad, ys.min() - pad, xs.max() + 1 + pad, ys.max() + 1 + pad)
    else:
        m = np.ones((SIZE, SIZE), bool)
    tgt = dict(src)
    if rng.random() < 0.5:
        change = rng.choice(["bg", "color", "shape"] if kind >= 2 else ["bg"])
        if change == "shape":
            tgt["shape"] = rng.choice([s for s in SHAPES if s != src["shape"]])
        else:
            tgt[change] = rng.choice([c for c in COLORS if c not in (src["color"], src["bg"])])
    source = render(src)[0]
    inside = render(tgt)[0]
    target = Image.fromarray(np.where(m[..., None], np.asarray(inside), np.asarray(source)))
    return tgt, m, source, target
