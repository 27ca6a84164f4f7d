"""Output folder layout, atomic no-overwrite writes, grids, PNG metadata and the manifest.

Layout (as the original scripts): ``OUTDIR/samples/NNNNN.png``, ``OUTDIR/grid-NNNN.png`` and
``OUTDIR/manifest.jsonl``. A file is written to a temporary name in its folder, then hard-linked to the
first free number: the link fails instead of overwriting, so two runs sharing a folder never collide, and
a killed run leaves at most a ``.tmp-*`` file, never a half-written image.
"""

from __future__ import annotations

import contextlib
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
MANIFEST = "manifest.jsonl"
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


def _write_temp(folder: Path, data: bytes, suffix: str = ".png") -> str:
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


def _link_free(tmp: str, folder: Path, pattern: re.Pattern, fmt: str) -> Path:
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
    tmp = _write_temp(folder, data)
    try:
        return _link_free(tmp, folder, pattern, fmt)
    finally:
        os.unlink(tmp)


@contextlib.contextmanager
def manifest_lock(outdir: Path):
    """Exclusive lock on OUTDIR/manifest.jsonl; yields its fd (opened for appending)."""
    import fcntl

    fd = os.open(Path(outdir) / MANIFEST, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _append(fd: int, records: list[dict[str, Any]]) -> None:
    """Append one JSON line per record in one write, then fsync (caller holds the lock)."""
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line of a killed run: end it first
        data = b"\n" + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def save_sample(outdir: Path, data: bytes, record: dict[str, Any],
                companion=None) -> tuple[Path, dict[str, Any]]:
    """Write a sample under the next free number and its manifest line, together under the manifest
    lock: a file is never numbered without its line being written right after (a kill -9 in between
    leaves a complete image that ``recover`` records on the next run). ``companion(target)`` may write
    a file beside the sample (e.g. its depth map) and return fields for the manifest line."""
    folder = Path(outdir) / "samples"
    tmp = _write_temp(folder, data)
    try:
        with manifest_lock(outdir) as fd:
            target = _link_free(tmp, folder, SAMPLE_RE, "{:05d}.png")
            extra = companion(target) if companion else {}
            line = {**record, "path": relpath(target, Path(outdir)), "sha256": sha256(data), "status": "ok", **extra}
            _append(fd, [line])
    finally:
        os.unlink(tmp)
    return target, line


def record_failures(outdir: Path, records: list[dict[str, Any]]) -> None:
    if records:
        with manifest_lock(outdir) as fd:
            _append(fd, [{**r, "status": "failed"} for r in records])


def recover(outdir: Path, stale_after: float = 600.0) -> int:
    """Heal the outdir after a killed run: record samples that have no manifest line (their embedded
    sdcli record says what they are), and delete temporary files older than ``stale_after`` seconds.
    Returns the number of samples recorded."""
    import time

    outdir = Path(outdir)
    folder = outdir / "samples"
    if not folder.is_dir():
        return 0
    now = time.time()
    for name in os.listdir(folder):
        if name.startswith(TMP_PREFIX):
            with contextlib.suppress(OSError):
                if now - (folder / name).stat().st_mtime > stale_after:
                    (folder / name).unlink()

    def unrecorded() -> list[Path]:
        known = {r.get("path") for r in read_manifest(outdir)}
        return [folder / n for n in sorted(os.listdir(folder)) if SAMPLE_RE.match(n) and f"samples/{n}" not in known]

    if not unrecorded():  # the common case: no lock, no write
        return 0
    recovered = []
    with manifest_lock(outdir) as fd:
        for path in unrecorded():  # again, under the lock
            try:
                record = json.loads(read_metadata(str(path)).get("sdcli", ""))
                data = path.read_bytes()
            except Exception:
                continue  # not an sdcli image: leave it alone
            if isinstance(record, dict) and "job_id" in record:
                recovered.append({**record, "path": relpath(path, outdir), "sha256": sha256(data), "status": "ok",
                                  "recovered": True})
        if recovered:
            _append(fd, recovered)
    return len(recovered)


def completed(outdir: Path) -> dict[str, dict[str, Any]]:
    """job_id -> manifest record, for every image that is complete: recorded ok, file present, sha256 equal."""
    outdir = Path(outdir)
    done: dict[str, dict[str, Any]] = {}
    for rec in read_manifest(outdir):
        if rec.get("status", "ok") != "ok" or "job_id" not in rec or "path" not in rec:
            continue
        path = outdir / rec["path"]
        try:
            if sha256(path.read_bytes()) == rec.get("sha256"):
                done[rec["job_id"]] = rec
        except OSError:
            continue
    return done


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


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def a1111_parameters(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text: prompt, optional negative prompt, then one ``key: value`` line."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def parse_a1111(text: str) -> dict[str, str]:
    """Parse a ``parameters`` text the way A1111's PNG Info does (the last line holds the settings)."""
    *head, last = text.strip().split("\n")
    pairs = re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', last)
    if len(pairs) < 3:
        return {"prompt": text}
    out = {k.strip(): (json.loads(v) if v.startswith('"') else v) for k, v in pairs}
    prompt, negative, in_negative = [], [], False
    for line in head:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out["prompt"] = "\n".join(prompt)
    out["Negative prompt"] = "\n".join(negative)
    return out


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


def append_manifest(outdir: Path, records: list[dict[str, Any]]) -> None:
    """Append one JSON line per record, under the manifest lock, in one write, then fsync."""
    if records:
        with manifest_lock(outdir) as fd:
            _append(fd, records)


def read_manifest(outdir: Path) -> list[dict[str, Any]]:
    path = Path(outdir) / MANIFEST
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:  # a torn line of a killed run (UnicodeDecodeError included)
            continue
    return out


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
