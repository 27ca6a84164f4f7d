"""What the peers share (standard library only, so every peer venv and sdcli's can import it): where the peer
venvs, their status files and the converted models live, a model folder's content key, and the one JSON line a
runner prints.

    ~/.cache/sdcli/bench/peers/<peer>/venv/          the peer's own venv (benchmarks/peers/setup.py)
    ~/.cache/sdcli/bench/peers/<peer>/status.json    installed or not, why not, versions, seconds
    ~/.cache/sdcli/bench/peers/<peer>/install.log    the full pip/cmake output of the last install
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

PEERS = ("optimum", "sdcpp")
HERE = Path(__file__).resolve().parent  # benchmarks/peers


sys.path.insert(0, str(HERE.parent))  # benchmarks/: build_sd15 (standard library at import) knows the cache
from build_sd15 import cache_base  # noqa: E402  ($SDCLI_BENCH_CACHE, else $XDG_CACHE_HOME/sdcli/bench)


def peers_dir() -> Path:
    return cache_base() / "peers"


def peer_dir(name: str) -> Path:
    return peers_dir() / name


def venv_python(name: str) -> Path:
    return peer_dir(name) / "venv" / "bin" / "python"


def status_path(name: str) -> Path:
    return peer_dir(name) / "status.json"


def read_status(name: str) -> dict:
    """The peer's status.json, or {"ok": False, "reason": "not installed ..."} when there is none."""
    path = status_path(name)
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"peer": name, "ok": False,
                "reason": f"not installed (run: python benchmarks/peers/setup.py {name})"}
    if st.get("ok") and not venv_python(name).exists():
        st = {**st, "ok": False, "reason": f"status says installed but {venv_python(name)} is missing"}
    return st


def write_status(name: str, st: dict) -> None:
    path = status_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(st, indent=2) + "\n")
    os.replace(tmp, path)


def model_key(folder: Path, parts=("unet", "vae", "text_encoder")) -> str:
    """A short key of a diffusers folder's weights and configs: name, size and mtime of each file of PARTS
    (reading 5 GB to hash it would cost more than a run), plus the scheduler's config."""
    h = hashlib.sha256()
    folder = Path(folder).resolve()
    for part in (*parts, "scheduler", "tokenizer"):
        for p in sorted((folder / part).glob("*")):
            if p.is_file():
                s = p.stat()
                h.update(f"{part}/{p.name}:{s.st_size}:{s.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def emit(result: dict) -> None:
    """The one JSON line a runner prints on stdout (the section reads the last line that parses)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def last_json(text: str) -> Optional[dict]:
    """The last line of TEXT that is a JSON object, or None."""
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def generation_args(ap, batch_help: str) -> None:
    """The work every peer runner takes, with the same names and defaults (the section passes them all)."""
    ap.add_argument("--out", required=True, help="folder for the PNGs (00000.png, 00001.png, ...)")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1, help=batch_help)
    ap.add_argument("--seed", type=int, default=42, help="image k uses seed+k [42]")
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")


def save_images(images: list, out: str) -> list[str]:
    """PIL images -> OUT/00000.png, 00001.png, ... (the names the section compares); their paths."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, im in enumerate(images):
        paths.append(str(folder / f"{k:05d}.png"))
        im.save(paths[-1])
    return paths
