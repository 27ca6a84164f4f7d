"""What keeps a run safe from the outside: SIGINT/SIGTERM stop it cleanly, and the --resume lock keeps two
resuming runs from making the same missing images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .errors import OutdirBusy
from .files import open_own_file
from .outputs import FILE_MODE

LOCK_NAME = ".sdcli-resume.lock"


class Stop:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step or between images, never mid-write.
    A second signal interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


@contextlib.contextmanager
def resume_lock(outdir: Path, resume: bool, name: str = LOCK_NAME):
    """--resume runs hold OUTDIR/.sdcli-resume.lock: two of them would generate the same missing jobs.
    A shard holds its own (``Shard.lock_name``): shards of one run resume side by side, the same shard twice
    is refused. (Plain runs need no lock: they never skip, and numbering and manifest lines are safe to share.)"""
    if not resume:
        yield
        return
    import fcntl
    import os

    fd = open_own_file(outdir / name, os.O_RDWR | os.O_CREAT, FILE_MODE, f"--outdir {outdir}: {name}")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            what = "it" if name == LOCK_NAME else f"it as this shard ({name})"
            raise OutdirBusy(f"--outdir {outdir}: another sdcli --resume run (pid {holder}) is working in {what}; "
                             "wait for it to finish, or use another --outdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
