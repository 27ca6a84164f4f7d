"""Install the peers of the benchmark's `peers` section, each in its own venv (never in sdcli's .venv).

    python3.11 benchmarks/peers/setup.py [optimum|sdcpp|all] [--force] [--jobs N]

- optimum: optimum-intel + OpenVINO + NNCF (int8 weight compression), with torch pinned to the CPU build
  (an unpinned torch would pull GBs of CUDA wheels) and the transformers/huggingface_hub versions that
  optimum-intel accepts.
- sdcpp: stable-diffusion-cpp-python, built from source (stable-diffusion.cpp + ggml, CPU only, -march=native
  with the AVX-512 options on) with CMAKE_BUILD_PARALLEL_LEVEL=--jobs (default 1: the machine is shared).

Idempotent: a peer whose status says installed with the same package list is left alone (--force redoes it).
Each peer gets ~/.cache/sdcli/bench/peers/<peer>/status.json: ok, the one-line reason it failed, versions,
seconds (install, and for sdcpp the build), which the section reads. Exit 0 if every asked peer installed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TORCH = "torch==2.13.0"  # the CPU build on PyPI (and in /opt/wheels); the same as sdcli's .venv
SPECS = {
    # optimum-intel 2.2 wants transformers < 5.6 and huggingface_hub < 1.22 (sdcli has 5.23 / 2.x): its own venv.
    # The versions pip resolved on 2026-11-25, pinned so a later run measures the same thing.
    "optimum": [TORCH, "optimum-intel[openvino,diffusers]==2.2.0", "optimum==2.3.0", "openvino==2026.4.1",
                "openvino-tokenizers==2026.4.1.0", "nncf==3.4.0", "diffusers==0.39.0", "transformers==5.5.4",
                "huggingface_hub==1.21.0", "pillow", "safetensors"],
    "sdcpp": ["stable-diffusion-cpp-python==0.4.7", "pillow", "numpy", "safetensors"],
}
VERSIONS = {
    "optimum": ["torch", "optimum-intel", "optimum", "openvino", "openvino-tokenizers", "nncf", "diffusers", "transformers",
                "huggingface_hub", "numpy"],
    "sdcpp": ["stable-diffusion-cpp-python", "numpy", "pillow"],
}
# CPU only; ggml's native build (-march=native) already enables what this CPU has; the AVX-512 switches are
# named too, so a non-native build (SOURCE_DATE_EPOCH set, cross builds) still gets them.
SDCPP_CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON "
                    "-DGGML_OPENMP=ON -DSD_WEBM=OFF")


def log(msg: str) -> None:
    print(f"[peers setup {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], logf, env=None) -> tuple[int, float]:
    logf.write(f"\n$ {' '.join(argv)}\n")
    logf.flush()
    t0 = time.perf_counter()
    rc = subprocess.call(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    return rc, time.perf_counter() - t0


def reason_from_log(path: Path) -> str:
    """The one line that says why an install failed: pip's ERROR line, else a CMake/compiler error, else the last."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for pick in (lambda l: l.startswith("ERROR:") and "Failed building wheel" not in l and "Could not build" not in l,
                 lambda l: "error:" in l.lower() or "CMake Error" in l, lambda l: True):
        hits = [ln for ln in lines if pick(ln)]
        if hits:
            return hits[-1][:300]
    return "no output"


def versions(py: Path, names: list[str]) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))") % (names,)
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def install(name: str, force: bool, jobs: int) -> bool:
    d = common.peer_dir(name)
    venv = d / "venv"
    py = common.venv_python(name)
    spec = SPECS[name] + ([f"CMAKE_ARGS={SDCPP_CMAKE_ARGS}"] if name == "sdcpp" else [])
    old = common.read_status(name)
    if not force and old.get("ok") and old.get("spec") == spec:
        log(f"{name}: already installed ({old.get('versions')}); --force to redo")
        return True
    d.mkdir(parents=True, exist_ok=True)
    if venv.exists():
        shutil.rmtree(venv)
    st = {"peer": name, "ok": False, "reason": None, "spec": spec, "python": sys.version.split()[0],
          "when": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    logpath = d / "install.log"
    t0 = time.perf_counter()
    env = dict(os.environ)
    with open(logpath, "w") as logf:
        log(f"{name}: creating {venv} (log: {logpath})")
        rc, _ = run([sys.executable, "-m", "venv", str(venv)], logf)
        rc = rc or run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], logf)[0]
        pip = [str(py), "-m", "pip", "install", "--progress-bar", "off"]
        if not rc and name == "optimum":
            log(f"{name}: pip install {TORCH} (CPU build), then optimum-intel, openvino, nncf ...")
            rc = run(pip + [TORCH], logf)[0] or run(pip + SPECS[name], logf)[0]
            # optimum-intel requires torchvision, and pip takes PyPI's, a CUDA build whose ops cannot load
            # beside the CPU torch ("operator torchvision::nms does not exist"); transformers then fails to
            # import AutoProcessor. Nothing here needs torchvision: remove it.
            rc = rc or run([str(py), "-m", "pip", "uninstall", "-y", "torchvision"], logf)[0]
        elif not rc and name == "sdcpp":
            log(f"{name}: building stable-diffusion-cpp-python from source, {jobs} job(s) (CMAKE_ARGS={SDCPP_CMAKE_ARGS}); "
                "this takes a while on one core ...")
            env.update(CMAKE_ARGS=SDCPP_CMAKE_ARGS, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs), FORCE_CMAKE="1")
            rc = run(pip + ["numpy", "pillow", "safetensors"], logf)[0]
            if not rc:
                rc, st["build_s"] = run(pip + ["-v", "--no-cache-dir", "--no-binary", "stable-diffusion-cpp-python",
                                               SPECS[name][0]], logf, env)
                st["build_s"] = round(st["build_s"], 1)
                st["build_jobs"] = jobs
        if not rc:
            rc = run([str(py), "-c", IMPORT_CHECK[name]], logf)[0]
    st["install_s"] = round(time.perf_counter() - t0, 1)
    st["versions"] = versions(py, VERSIONS[name]) if py.exists() else {}
    if rc:
        st["reason"] = reason_from_log(logpath)
        log(f"{name}: FAILED after {st['install_s']:.0f}s: {st['reason']}")
    else:
        st["ok"] = True
        log(f"{name}: installed in {st['install_s']:.0f}s" + (f" (build {st['build_s']:.0f}s)" if "build_s" in st else "")
            + f": {st['versions']}")
    common.write_status(name, st)
    return st["ok"]


IMPORT_CHECK = {
    "optimum": "import openvino, nncf, torch; from optimum.intel import OVStableDiffusionPipeline; "
               "print(openvino.__version__, torch.__version__)",
    "sdcpp": "from stable_diffusion_cpp import StableDiffusion; import stable_diffusion_cpp as s; print(s.__version__)",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("peer", nargs="?", default="all", choices=[*common.PEERS, "all"])
    ap.add_argument("--force", action="store_true", help="reinstall even if the status says installed")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "1")),
                    help="parallel compile jobs for the sdcpp build [1, or $CMAKE_BUILD_PARALLEL_LEVEL]")
    a = ap.parse_args(argv)
    if sys.version_info[:2] < (3, 9):
        raise SystemExit("peers setup: needs Python 3.9+ (3.11 as sdcli's venv)")
    names = common.PEERS if a.peer == "all" else (a.peer,)
    ok = [install(n, a.force, max(1, a.jobs)) for n in names]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
