"""The manifest file (OUTDIR/manifest.jsonl): one JSON line per image or failure, appended under a lock;
samples written together with their line; recovery after a killed run; what --resume finds complete."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from .outputs import FILE_MODE, SAMPLE_RE, TMP_PREFIX, host_tag, link_free, write_temp, read_metadata, relpath, sha256
from .files import open_own_file, read_regular
from .records import manifest_line

MANIFEST = "manifest.jsonl"
MAX_MANIFEST_BYTES = 1 << 30
MAX_IMAGE_BYTES = 1 << 30


@contextlib.contextmanager
def manifest_lock(outdir: Path):
    """Exclusive lock on OUTDIR/manifest.jsonl; yields its fd (opened for appending)."""
    import fcntl

    fd = open_own_file(Path(outdir) / MANIFEST, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE,
                       f"--outdir {outdir}: {MANIFEST}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def write_lines(fd: int, records: list[dict[str, Any]]) -> None:
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
                companion=None, suffix: str = ".png") -> tuple[Path, dict[str, Any]]:
    """Write a sample under the next free number and its manifest line, together under the manifest
    lock: a file is never numbered without its line being written right after (a kill -9 in between
    leaves a complete image that ``recover`` records on the next run). ``companion(target)`` may write
    a file beside the sample (e.g. its depth map) and return fields for the manifest line. ``suffix``: the
    file type (.png, .jpg, .webp), numbered with the others."""
    folder = Path(outdir) / "samples"
    tmp = write_temp(folder, data, suffix)
    try:
        with manifest_lock(outdir) as fd:
            target = link_free(tmp, folder, SAMPLE_RE, "{:05d}" + suffix)
            extra = companion(target) if companion else {}
            line = manifest_line(record, relpath(target, Path(outdir)), sha256(data), **extra)
            write_lines(fd, [line])
    finally:
        os.unlink(tmp)
    return target, line


def record_failures(outdir: Path, records: list[dict[str, Any]]) -> None:
    if records:
        with manifest_lock(outdir) as fd:
            write_lines(fd, [{**r, "status": "failed"} for r in records])


def recover(outdir: Path, stale_after: float = 600.0) -> int:
    """Heal the outdir after a killed run: record samples that have no manifest line (their embedded
    sdcli record says what they are), and delete the temporary files of runs that are gone. Returns the
    number of samples recorded."""
    outdir = Path(outdir)
    folder = outdir / "samples"
    for where in (outdir, folder):
        _remove_stale_temporaries(where, stale_after)
    if not folder.is_dir():
        return 0

    def unrecorded() -> list[Path]:
        known = {r.get("path") for r in read_manifest(outdir) if isinstance(r.get("path"), str)}
        return [folder / n for n in sorted(os.listdir(folder)) if SAMPLE_RE.match(n) and f"samples/{n}" not in known]

    if not unrecorded():  # the common case: no lock, no write
        return 0
    recovered = []
    with manifest_lock(outdir) as fd:
        for path in unrecorded():  # again, under the lock
            data = read_regular(path, MAX_IMAGE_BYTES)
            try:
                record = json.loads(read_metadata(str(path)).get("sdcli", "")) if data is not None else None
            except Exception:
                continue  # not an sdcli image: leave it alone
            if isinstance(record, dict) and "job_id" in record:
                recovered.append(manifest_line(record, relpath(path, outdir), sha256(data), recovered=True))
        if recovered:
            write_lines(fd, recovered)
    return len(recovered)


def _remove_stale_temporaries(folder: Path, stale_after: float) -> None:
    """Delete ``.tmp-PID-HOST-*`` files whose writer on this machine is gone, and any older than ``stale_after``
    s (a writer on another machine sharing the outdir, or another name)."""
    import time

    try:
        names = [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]
    except OSError:
        return
    now = time.time()
    here = host_tag()
    for name in names:
        pid, host = (name[len(TMP_PREFIX):].split("-", 2) + ["", ""])[:2]
        local = host == here or len(host) != 8  # an older name has no host: this machine's
        with contextlib.suppress(OSError):
            if (local and pid.isdigit() and not _alive(int(pid))) or now - os.lstat(folder / name).st_mtime > stale_after:
                os.unlink(folder / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def completed(outdir: Path, damaged: Optional[list[int]] = None) -> dict[str, dict[str, Any]]:
    """job_id -> manifest record, for every image that is complete: recorded ok, file present, sha256 equal.
    Damaged lines are skipped (their numbers added to ``damaged``)."""
    outdir = Path(outdir)
    done: dict[str, dict[str, Any]] = {}
    for number, rec in _records(outdir):
        status = rec.get("status", "ok") if rec is not None else None
        if (status == "failed" and isinstance(rec.get("job_id"), str)) or status == "run":  # grids.RUN_STATUS
            continue
        job_id, path, digest = (rec.get(k) for k in ("job_id", "path", "sha256")) if rec else (None, None, None)
        if status != "ok" or not all(isinstance(v, str) for v in (job_id, path, digest)) \
                or Path(path).is_absolute() or ".." in Path(path).parts:  # only files inside its outdir
            if damaged is not None:
                damaged.append(number)
            continue
        data = read_regular(outdir / path, MAX_IMAGE_BYTES)
        if data is not None and sha256(data) == digest:
            done[job_id] = rec
    return done


def append_manifest(outdir: Path, records: list[dict[str, Any]]) -> None:
    """Append one JSON line per record, under the manifest lock, in one write, then fsync."""
    if records:
        with manifest_lock(outdir) as fd:
            write_lines(fd, records)


def read_manifest(outdir: Path) -> list[dict[str, Any]]:
    """The manifest's records; a line that is not a JSON object (a torn line of a killed run, or damage) is
    skipped: one bad line never makes an outdir unusable."""
    return [record for _, record in _records(outdir) if record is not None]


def _records(outdir: Path):
    """(line number, record or None for a line that is not a JSON object) for each non-blank line."""
    data = read_regular(Path(outdir) / MANIFEST, MAX_MANIFEST_BYTES)
    for number, line in enumerate((data or b"").split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError included
            record = None
        yield number, record if isinstance(record, dict) else None
