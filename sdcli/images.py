"""Input images: finding them (file, folder, glob, inpaint pairs), checking them before the model loads,
and bringing them to the generation size.

Size rule (README "Input image sizes"): without ``--W/--H`` the output has the input's size rounded down
to a multiple of 8; with one of them, the other follows the input's aspect ratio; ``--resolution R``
(instruct-edit) sets the longest side to about R, rounded to multiples of 64 as InstructPix2Pix's
edit_cli.py did. The image is then brought to that size by ``--resize-mode``: ``crop`` (default) scales
it to cover the size and cuts the overflow from the centre, so nothing is distorted; ``resize`` stretches
it exactly.
"""

from __future__ import annotations

import glob
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UsageError, first_line
from .files import read_user_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_INPUT_SIDE = 16384
MAX_INPUT_PIXELS = 64 * 1024 * 1024
MAX_INPUT_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    """A checked input file: where it is and the sha256 of the bytes that were checked."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ImageInfo:
    path: str
    width: int
    height: int
    sha256: str


def expand(spec: str, flag: str) -> list[str]:
    """A file, a folder (its images, sorted) or a glob pattern -> image paths."""
    p = Path(spec).expanduser()
    if p.is_dir():
        found = sorted(str(x) for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES and not x.name.startswith("."))
        if not found:
            raise UsageError(f"{flag} {spec}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if any(c in spec for c in "*?[") and not p.exists():
        found = sorted(x for x in glob.glob(str(p)) if Path(x).is_file())
        if not found:
            raise UsageError(f"{flag} {spec}: no file matches this pattern")
        return found
    return [str(p)]


def inpaint_pairs(indir: str) -> list[tuple[str, str]]:
    """CompVis inpaint.py --indir: every ``x_mask.png`` with its ``x.png``."""
    folder = Path(indir).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--indir {indir}: no such folder")
    masks = sorted(folder.glob("*_mask.png"))
    if not masks:
        raise UsageError(f"--indir {indir}: no *_mask.png files; give pairs x.png + x_mask.png")
    pairs = []
    for mask in masks:
        image = mask.with_name(mask.name[: -len("_mask.png")] + ".png")
        if not image.is_file():
            raise UsageError(f"--indir {indir}: {mask.name} has no image {image.name}")
        pairs.append((str(image), str(mask)))
    return pairs


def inspect(path: str, flag: str) -> ImageInfo:
    """Open and fully decode an image file, so that missing, unreadable, truncated and non-image files
    (and decompression bombs) are reported before the model loads."""
    from PIL import Image, UnidentifiedImageError

    name = f"{flag} {path}"
    data = read_user_file(path, name, "an image file (PNG, JPEG or WebP)", MAX_INPUT_BYTES)
    import io
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w > MAX_INPUT_SIDE or h > MAX_INPUT_SIDE or w * h > MAX_INPUT_PIXELS:
                    raise UsageError(f"{name}: {w}x{h} is too large (at most {MAX_INPUT_SIDE} px a side, "
                                     f"{MAX_INPUT_PIXELS >> 20} Mpx); scale it down first")
                im.load()
                if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: rotated 90/270 degrees
                    w, h = h, w
    except UsageError:
        raise
    except UnidentifiedImageError:
        raise UsageError(f"{name}: not an image PIL can read; give a PNG, JPEG or WebP file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(f"{name}: too many pixels (decompression bomb?); scale it down first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UsageError(f"{name}: damaged or truncated image ({first_line(e, 120)})") from None
    return ImageInfo(str(Path(path)), w, h, hashlib.sha256(data).hexdigest())


def _round8(x: float) -> int:
    return max(8, int(x) // 8 * 8)


def target_size(width: int, height: int, W: Optional[int], H: Optional[int],
                resolution: Optional[int] = None) -> tuple[int, int]:
    """The output size for an input of ``width`` x ``height`` (see the module text). Pure."""
    if W and H:
        return W, H
    if W:
        return W, _round8(W * height / width)
    if H:
        return _round8(H * width / height), H
    if resolution:  # InstructPix2Pix edit_cli.py
        factor = resolution / max(width, height)
        factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
        return max(64, int((width * factor) // 64) * 64), max(64, int((height * factor) // 64) * 64)
    return _round8(width), _round8(height)


def fit(image, W: int, H: int, mode: str):
    """Bring a PIL image to exactly W x H: ``crop`` (cover + centre crop) or ``resize`` (stretch)."""
    from PIL import Image, ImageOps

    if image.size == (W, H):
        return image
    if mode == "resize":
        return image.resize((W, H), Image.Resampling.LANCZOS)
    return ImageOps.fit(image, (W, H), method=Image.Resampling.LANCZOS)


def _to_l(im):
    """Grey levels 0..255; 16-bit and float images (depth maps as MiDaS/ZoeDepth write them) are scaled
    by their own range instead of being clipped."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        import numpy as np
        from PIL import Image

        a = np.asarray(im, dtype=np.float64)
        span = float(a.max() - a.min()) or 1.0
        return Image.fromarray(((a - a.min()) / span * 255).round().astype(np.uint8), "L")
    return im.convert("L")


def is_flat(path: str) -> bool:
    """True if the image has one value everywhere (e.g. a depth map with no depth)."""
    from PIL import Image

    with Image.open(path) as im:
        lo, hi = _to_l(im).getextrema()
    return lo == hi


def load(file: "InputFile", W: int, H: int, mode: str, kind: str = "RGB"):
    """Load a checked input image as ``kind`` (RGB, or L for masks and depth maps), fitted to W x H. The bytes
    read must be those checked before the run (their sha256 is what the records say was used)."""
    import io

    from PIL import Image, ImageOps

    data = read_user_file(file.path, file.path, "an image file", MAX_INPUT_BYTES)
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise UsageError(f"{file.path}: changed on disk since the run started (its sha256 differs); rerun to use "
                         "the new file")
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if kind == "L":
            return fit(_to_l(im), W, H, mode)
        if kind == "RGB" and im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        return fit(im.convert(kind), W, H, mode)


def depth_map(pipe, image, file: Optional[InputFile], width: int, height: int, mode: str):
    """The depth map for depth2img: from a file (white = near) or the model's depth estimator.
    Returns (tensor (1, h, w) for the pipeline, PIL L image at the output size)."""
    import numpy as np
    import torch
    from PIL import Image

    if file is not None:
        pil = load(file, width, height, mode, "L")
        tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)[None]
        return tensor, pil
    device, dtype = pipe.device, pipe.depth_estimator.dtype
    pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values.to(device, dtype)
    with torch.no_grad():
        predicted = pipe.depth_estimator(pixels).predicted_depth.float().cpu()  # (1, h, w)
    d = predicted[0].numpy()
    span = float(d.max() - d.min()) or 1.0
    pil = Image.fromarray(((d - d.min()) / span * 255).round().astype(np.uint8), "L").resize((width, height),
                                                                                           Image.Resampling.BICUBIC)
    return predicted, pil


def paste_back(generated, original, mask, blur: int):
    """Inpainting's unmasked pixels taken from the input, as CompVis inpaint.py did
    (``(1 - mask) * image + mask * predicted``, the mask made binary at half grey): the mask is binarised,
    feathered by a Gaussian blur of ``blur`` pixels (0: a hard edge, exactly inpaint.py), and used as the
    alpha of the generated image over the input. Where the blurred mask is 0 the input comes back exactly."""
    from PIL import Image, ImageFilter

    alpha = mask.convert("L").point(lambda v: 255 if v >= 128 else 0)
    if blur:
        alpha = alpha.filter(ImageFilter.GaussianBlur(blur))
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), alpha)
