"""Helpers shared by the tests (fixtures live in conftest.py): results of CLI calls, subprocess runs of the
console script, manifest and pixel readers, folder snapshots, fast settings for the tiny model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    code: int
    out: str
    err: str
    loads: int = 0  # models and safety checkers loaded during the call (0: everything was checked before)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if re.match(r"sdcli(\[\d+/\d+\])?: error:", line)]

    def one_error(self, code: int, *words: str) -> bool:
        """Exit code as given, exactly one error line naming every word, no traceback."""
        assert self.code == code, (self.code, self.err)
        assert len(self.error_lines) == 1, self.err
        assert "Traceback" not in self.err, self.err
        for w in words:
            assert w in self.error_lines[0], (w, self.error_lines[0])
        return True


def sdcli_command(*args) -> list[str]:
    """The command line of the installed console script ``sdcli`` (or ``python -m sdcli`` as a fallback)."""
    exe = Path(sys.executable).with_name("sdcli")
    return ([str(exe)] if exe.exists() else [sys.executable, "-m", "sdcli"]) + [str(a) for a in args]


def run_process(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run the console script to the end."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(sdcli_command(*args), capture_output=True, text=True, env=full_env, timeout=timeout, **kwargs)


def manifest(outdir: Path) -> list[dict]:
    path = Path(outdir) / "manifest.jsonl"
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()] if path.exists() else []


def pixels(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes (to prove nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# Fast settings for runs on the tiny model: 64 px, 2 steps, DDIM (cheaper than PNDM).
FAST = ["--steps", 2, "--H", 64, "--W", 64, "--scheduler", "ddim"]


class deadline:
    """``with deadline(20):`` fails the test with TimeoutError instead of hanging (a FIFO, a lock)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        import signal

        def expired(signum, frame):
            raise TimeoutError(f"still running after {self.seconds}s: it hangs")

        self.previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        import signal

        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.previous)
        return False
