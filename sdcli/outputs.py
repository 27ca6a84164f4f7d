"""Image files: the output folder layout, atomic no-overwrite writes, grids, image encoding with metadata.

Layout (as the original scripts): ``OUTDIR/samples/NNNNN.png``, ``OUTDIR/grid-NNNN.png`` and
``OUTDIR/manifest.jsonl``. A file is written to a temporary name in its folder, then hard-linked to the
first free number: the link fails instead of overwriting, so two runs sharing a folder never collide, and
a killed run leaves at most a ``.tmp-*`` file, never a half-written image.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError

SAMPLE_RE = re.compile(r"^(\d{5,})\.png$")
GRID_RE = re.compile(r"^grid-(\d{4,})\.png$")
TMP_PREFIX = ".tmp-"


def prepare_outdir(outdir: str, need_samples: bool = True) -> Path:
    """Create OUTDIR (and samples/) and prove it is writable, before any model is loaded."""
    root = Path(outdir).expanduser()
    try:
        if root.exists() and not root.is_dir():
            raise UsageError(f"--outdir {outdir}: exists and is not a folder; choose another path")
        root.mkdir(parents=True, exist_ok=True)
        if need_samples:
            (root / "samples").mkdir(exist_ok=True)
        for folder in [root] + ([root / "samples"] if need_samples else []):
            fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
            os.close(fd)
            os.unlink(probe)
    except UsageError:
        raise
    except FileExistsError:
        raise UsageError(f"--outdir {outdir}: samples exists and is not a folder; choose another path") from None
    except NotADirectoryError:
        raise UsageError(f"--outdir {outdir}: a part of the path is a file; choose another path") from None
    except OSError as e:
        raise UsageError(f"--outdir {outdir}: not writable ({e.strerror}); choose a folder you can write to") from None
    return root


def _next_free(folder: Path, pattern: re.Pattern) -> int:
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return max(numbers) + 1 if numbers else 0


def write_temp(folder: Path, data: bytes, suffix: str = ".png") -> str:
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def link_free(tmp: str, folder: Path, pattern: re.Pattern, fmt: str) -> Path:
    n = _next_free(folder, pattern)
    while True:
        target = folder / fmt.format(n)
        try:
            os.link(tmp, target)
            return target
        except FileExistsError:
            n += 1


def write_numbered(folder: Path, data: bytes, pattern: re.Pattern, fmt: str) -> Path:
    """Write ``data`` atomically under the first free number (``fmt.format(n)``); never overwrites."""
    tmp = write_temp(folder, data)
    try:
        return link_free(tmp, folder, pattern, fmt)
    finally:
        os.unlink(tmp)


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def write_exact(path: Path, data: bytes) -> Path:
    """Write ``data`` to exactly ``path`` atomically (temp file + rename): an explicit name replaces."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def encode_image(image, suffix: str, parameters: str, record: dict[str, Any]) -> bytes:
    """PNG with text chunks, or JPEG/WebP with the same texts in EXIF (UserComment = A1111 parameters,
    ImageDescription = the sdcli record). JPEG keeps full chroma (subsampling=0) for the watermark."""
    fmt = FORMATS[suffix.lower()]
    if fmt == "PNG":
        return encode_png(image, parameters, record)
    from PIL import Image

    exif = Image.Exif()
    exif[0x010E] = json.dumps(record, ensure_ascii=False, sort_keys=True)  # ImageDescription
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + parameters.encode("utf-16-be")  # Exif UserComment
    buf = io.BytesIO()
    extra = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {"quality": 95}
    image.save(buf, format=fmt, exif=exif, **extra)
    return buf.getvalue()


def encode_png(image, parameters: str, record: dict[str, Any]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    info.add_text("sdcli", json.dumps(record, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_grid(images: list, per_row: int, padding: int = 2):
    """A grid like torchvision's make_grid: ``per_row`` images a row, ``padding`` px black between."""
    from PIL import Image

    w, h = images[0].size
    cols = max(1, min(per_row, len(images)))
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (w + padding) + padding, rows * (h + padding) + padding))
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im, (padding + c * (w + padding), padding + r * (h + padding)))
    return grid


def read_metadata(path: str) -> dict[str, str]:
    """``parameters`` and ``sdcli`` texts of an image: PNG text chunks, or JPEG/WebP EXIF."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            found = dict(getattr(im, "text", {}) or {})
            exif = im.getexif()
            if 0x010E in exif:
                found.setdefault("sdcli", exif[0x010E])
            comment = exif.get_ifd(0x8769).get(0x9286)
            if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
                found.setdefault("parameters", comment[8:].decode("utf-16-be", errors="replace"))
            return found
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path}: not a readable image ({e.__class__.__name__})") from None


def relpath(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def disk_error(e: OSError, outdir: Path) -> Optional[str]:
    """A one-line message for write errors a user can fix (disk full, quota), or None."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"--outdir {outdir}: disk full; free space and rerun with --resume"
    return None
