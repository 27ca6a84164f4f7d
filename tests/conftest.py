"""Shared fixtures: offline environment, one tiny model per kind per session, and CLI runners.

Most tests call ``sdcli.cli.main`` in-process (the function the console script runs); a few start real
processes for what only a process shows (console script, exit codes, imports at start-up). Helpers that
are not fixtures are in helpers.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("SDCLI_DEBUG", None)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from helpers import Result  # noqa: E402


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


@pytest.fixture
def sdcli(capsys, monkeypatch):
    """sdcli(*args) -> Result, through the same main() the console script calls; Result.loads counts the
    models and safety checkers it loaded."""
    from sdcli import models, postprocess
    from sdcli.cli import main

    loads = []
    for module, name in ((models, "load_pipeline"), (postprocess, "load_safety_checker")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: loads.append(1) or _real(*a, **k))

    def call(*args) -> Result:
        capsys.readouterr()
        loads.clear()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err, len(loads))

    return call


