"""Shared fixtures: offline environment, one tiny model per kind per session, and CLI runners.

Most tests call ``sdcli.cli.main`` in-process (the function the console script runs); a few start real
processes for what only a process shows (console script, exit codes, imports at start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("SDCLI_DEBUG", None)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session", autouse=True)
def _sandbox(tmp_path_factory):
    """No network, no user cache: tiny models and the HF cache live in a session folder."""
    root = tmp_path_factory.mktemp("env")
    os.environ["SDCLI_CACHE"] = str(root / "sdcli-cache")
    os.environ["HF_HOME"] = str(root / "hf-home")
    os.environ["HF_HUB_CACHE"] = str(root / "hf-home" / "hub")
    yield root


@pytest.fixture(scope="session")
def tiny():
    """tiny(task) -> the cached tiny model folder for that task (built once per session)."""
    import torch

    torch.set_num_threads(1)
    from sdcli import tiny as tiny_mod

    return lambda task="txt2img": tiny_mod.ensure(task)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("sdcli: error:")]

    def one_error(self, code: int, *words: str) -> bool:
        """Exit code as given, exactly one error line naming every word, no traceback."""
        assert self.code == code, (self.code, self.err)
        assert len(self.error_lines) == 1, self.err
        assert "Traceback" not in self.err, self.err
        for w in words:
            assert w in self.error_lines[0], (w, self.error_lines[0])
        return True


@pytest.fixture
def sdcli(capsys):
    """sdcli(*args) -> Result, through the same main() the console script calls."""
    from sdcli.cli import main

    def call(*args) -> Result:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return call


def run_process(*args, env=None, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed console script ``sdcli`` (or ``python -m sdcli`` as a fallback)."""
    exe = Path(sys.executable).with_name("sdcli")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sdcli"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, **kwargs)


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
