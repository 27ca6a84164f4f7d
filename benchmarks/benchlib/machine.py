"""What a run ran on: the machine (CPU, cores, SIMD flags, RAM, GPUs), the package versions, the git commit."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

from .paths import ROOT


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "os": platform.platform(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            info["cpu"] = m.group(1).strip()
        cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S)}
        info["physical_cores"] = len(cores) or None
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if m:
            have = set(m.group(1).split())
            info["flags"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in have]
    except OSError:
        pass
    try:
        import psutil

        info["ram_bytes"] = psutil.virtual_memory().total
    except ImportError:
        m = re.search(r"MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text())
        info["ram_bytes"] = int(m.group(1)) * 1024 if m else None
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        info["gpus"] = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]
    return info


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "diffusers", "transformers", "sdcli", "huggingface_hub", "accelerate", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_commit() -> Optional[str]:
    try:
        r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        head = r.stdout.strip() or None
        d = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
        return head and head + ("+local changes" if d.stdout.strip() else "")
    except OSError:
        return None
