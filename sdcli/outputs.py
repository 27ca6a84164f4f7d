"""Image files: the output folder layout, atomic no-overwrite writes, grids, image encoding with metadata.

Layout (as the original scripts): ``OUTDIR/samples/NNNNN.png``, ``OUTDIR/grid-NNNN.png`` (or ``.jpg``,
``.webp`` with ``--format``) and ``OUTDIR/manifest.jsonl``. A file is written to a temporary name in its
folder, then hard-linked to the first free number (one numbering for every format, under a lock on the
folder): the link fails instead of overwriting, so two runs sharing a folder never collide, and a killed
run leaves at most a ``.tmp-*`` file, never a half-written image. Every file gets the mode a plain
``open()`` gives under the umask (``tempfile.mkstemp`` would make it 0600).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError
from .files import folder_problem, read_regular

SAMPLE_RE = re.compile(r"^(\d{5,})\.(?:png|jpg|webp)$")  # one numbering for every --format
GRID_RE = re.compile(r"^grid-(\d{4,})\.(?:png|jpg|webp)$")
TMP_PREFIX = ".tmp-"


def host_tag() -> str:
    """8 hex digits naming this machine in temporary file names: shards on several machines share an outdir
    on a network folder, and a writer's process id means nothing on another machine."""
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
FILE_MODE = 0o666  # less the umask, as open() does


def create_temp(folder: Path, suffix: str = "") -> tuple[int, str]:
    """A new temporary file in ``folder``, open for writing, with the mode ``open()`` would give."""
    while True:
        name = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{host_tag()}-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), name
        except FileExistsError:
            continue


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Exclusive lock on a folder while a number is chosen in it (``00005.png`` and ``00005.jpg`` would
    not collide as names)."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prepare_outdir(outdir: str, need_samples: bool = True) -> Path:
    """Create OUTDIR (and samples/) and prove it is writable, before any model is loaded."""
    root = Path(outdir).expanduser()
    _no_linked_samples(root, outdir)
    try:
        if root.exists() and not root.is_dir():
            raise UsageError(f"--outdir {outdir}: exists and is not a folder; choose another path")
        root.mkdir(parents=True, exist_ok=True)
        if need_samples:
            (root / "samples").mkdir(exist_ok=True)
        for folder in [root] + ([root / "samples"] if need_samples else []):
            fd, probe = create_temp(folder)
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


def _no_linked_samples(root: Path, outdir: str) -> None:
    """OUTDIR/samples is sdcli's own folder: a symbolic link there would send samples outside the outdir."""
    if (root / "samples").is_symlink():
        raise UsageError(f"--outdir {outdir}: samples is a symbolic link; sdcli writes samples only inside the "
                         "outdir: remove the link")


def check_outdir(outdir: str, need_samples: bool = True) -> Path:
    """What ``prepare_outdir`` would refuse, found without creating anything (``--dry-run``)."""
    root = Path(outdir).expanduser()
    _no_linked_samples(root, outdir)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--outdir {outdir}: exists and is not a folder; choose another path")
    if need_samples and (root / "samples").exists() and not (root / "samples").is_dir():
        raise UsageError(f"--outdir {outdir}: samples exists and is not a folder; choose another path")
    problem = folder_problem(root)
    if problem:
        raise UsageError(f"--outdir {outdir}: {problem}; choose a folder you can write to")
    return root


def _next_free(folder: Path, pattern: re.Pattern) -> int:
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return max(numbers) + 1 if numbers else 0


def write_temp(folder: Path, data: bytes, suffix: str = ".png") -> str:
    fd, tmp = create_temp(folder, suffix)
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
    with folder_lock(folder):
        n = _next_free(folder, pattern)
        while True:
            target = folder / fmt.format(n)
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:  # a writer that does not take the lock
                n += 1


def write_numbered(folder: Path, data: bytes, pattern: re.Pattern, fmt: str) -> Path:
    """Write ``data`` atomically under the first free number (``fmt.format(n)``); never overwrites."""
    tmp = write_temp(folder, data, Path(fmt).suffix)
    try:
        return link_free(tmp, folder, pattern, fmt)
    finally:
        os.unlink(tmp)


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # file suffix -> Pillow format


def suffix_of(fmt: str) -> str:
    """A ``--format`` value (config.IMAGE_FORMATS) -> the file suffix: png -> .png."""
    return f".{fmt}"


def write_exact(path: Path, data: bytes) -> Path:
    """Write ``data`` to exactly ``path`` atomically (temp file + rename): an explicit name replaces."""
    fd, tmp = create_temp(path.parent, path.suffix)
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


WEBP_LOSSLESS = 100  # --quality at which WebP is written lossless


def loses_watermark(suffix: str, quality: int) -> bool:
    """Does this file type erase the invisible watermark? Lossy WebP always halves the chroma resolution,
    which erases dwtDct's mark (measured: 0 of 10 decoded, at any quality); lossless WebP and JPEG with
    full chroma keep it."""
    return FORMATS[suffix.lower()] == "WEBP" and quality < WEBP_LOSSLESS


def encode_image(image, suffix: str, parameters: str, record: Optional[dict[str, Any]], quality: int = 95) -> bytes:
    """PNG with text chunks, or JPEG/WebP with the same texts in EXIF as A1111 writes them (``exif.py``).
    ``quality`` is JPEG's and WebP's (100: lossless WebP); JPEG keeps full chroma (subsampling=0) for the
    watermark."""
    fmt = FORMATS[suffix.lower()]
    if fmt == "PNG":
        return encode_png(image, parameters, record)
    from . import exif

    buf = io.BytesIO()
    extra = {"subsampling": 0} if fmt == "JPEG" else {"lossless": quality >= WEBP_LOSSLESS}
    data = exif.dump(parameters, record, exif.MAX_JPEG_EXIF if fmt == "JPEG" else None)
    image.convert("RGB").save(buf, format=fmt, exif=data, quality=quality, **extra)
    return buf.getvalue()


def encode_png(image, parameters: str, record: Optional[dict[str, Any]]) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    if record is not None:
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

    from . import exif

    data = read_regular(Path(path), 1 << 30)
    if data is None:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file")
        raise UsageError(f"{path}: not a regular file (or over 1 GiB); give an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return {**exif.texts(im.getexif()), **dict(getattr(im, "text", {}) or {})}
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
