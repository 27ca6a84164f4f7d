"""Peers (issue 14): the same SD 1.5 work through sdcli, the diffusers reference script, OpenVINO (optimum-intel)
and stable-diffusion.cpp, each peer in its own venv (benchmarks/peers/setup.py), alternated per cell of a grid
(size x steps x batch): load and generation seconds apart (each tool's own report), the whole process's wall and
peak RSS (the harness), and each image's pixel difference from sdcli's fp32 image of the same cell.

Options (environment variables, or the same-named bench.py flags where main.py defines them):
  SDCLI_BENCH_PEERS_GRID     cells "SIZE:STEPS:BATCH[=entry+entry...]", comma-separated [DEFAULT_GRID]
  SDCLI_BENCH_PEERS_ENTRIES  only these entries, comma-separated [all of ENTRIES]
  SDCLI_BENCH_PEERS_RUNS     runs per entry and cell [1]
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Optional

from ..context import PROMPT, Bench
from ..harness import Spec, log, run_once
from ..markdown import NOISE_NOTE, cell, code, fmt_cpu, fmt_mib, fmt_noise, fmt_range, fmt_s, runs_text, section
from ..paths import HERE, PYTHON, REFERENCE
from ..pixels import compare

from peers import common  # benchmarks/peers (benchmarks/ is on sys.path: bench.py lives there)

NAME = "peers"
PEERS_DIR = HERE / "peers"
# key -> (label, peer venv or None for sdcli's, how the command is made)
ENTRIES = {
    "sdcli-default": ("sdcli, its defaults (--backend auto --precision auto)", None),
    "sdcli": ("sdcli --backend torch (fp32)", None), "sdcli-bf16": ("sdcli --backend torch --precision bf16", None),
    "sdcli-ov": ("sdcli --backend openvino (fp32)", None),
    "sdcli-ov-bf16": ("sdcli --backend openvino --precision bf16", None),
    "reference": ("diffusers reference script (fp32)", None),
    "ov-f32": ("OpenVINO fp32", "optimum"), "ov-bf16": ("OpenVINO bf16 compute", "optimum"),
    "ov-int8": ("OpenVINO int8 weights, f32 compute", "optimum"),
    "sdcpp-f32": ("sd.cpp f32", "sdcpp"), "sdcpp-f16": ("sd.cpp f16", "sdcpp"), "sdcpp-q8_0": ("sd.cpp q8_0", "sdcpp"),
    "sdcpp-q4_0": ("sd.cpp q4_0", "sdcpp"),
}
DEFAULT_ENTRIES = [k for k in ENTRIES if k != "sdcpp-q4_0"]
PYTORCH_OV = "sdcli-default+sdcli+sdcli-bf16+sdcli-ov+reference+ov-f32+ov-bf16+ov-int8"
# ~30-40 min on 2 cores: every entry at the cheapest cell; the batch of 4 and 512 px without sd.cpp (minutes per
# image there); 512 px x 20 steps (PyTorch fp32 ~140 s an image) for the fast ones only.
DEFAULT_GRID = (f"256:4:1,256:4:4={PYTORCH_OV},512:4:1={PYTORCH_OV},"
                "512:20:1=sdcli-default+sdcli+sdcli-bf16+ov-bf16+ov-int8")
SMOKE_GRID = "64:2:1=sdcli+reference+sdcli-default"
SDCLI_FLAGS = {"sdcli-default": ["--backend", "auto", "--precision", "auto"], "sdcli": [],
               "sdcli-bf16": ["--precision", "bf16"], "sdcli-ov": ["--backend", "openvino"],
               "sdcli-ov-bf16": ["--backend", "openvino", "--precision", "bf16"]}


def option(bench: Bench, name: str, default: str) -> str:
    return str(getattr(bench.args, f"peers_{name}", None) or os.environ.get(f"SDCLI_BENCH_PEERS_{name.upper()}") or default)


def parse_grid(text: str, allowed: list[str]) -> list[dict]:
    cells = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        dims, _, names = item.partition("=")
        size, steps, batch = (int(x) for x in dims.split(":"))
        keys = [k for k in (names.split("+") if names else ENTRIES) if k in allowed]
        unknown = [k for k in (names.split("+") if names else []) if k not in ENTRIES]
        if unknown or size % 8:
            raise SystemExit(f"peers: bad grid cell {item!r} (entries: {', '.join(ENTRIES)}; size a multiple of 8)")
        cells.append({"size": size, "steps": steps, "batch": batch, "entries": keys,
                      "name": f"{size}px-{steps}st-b{batch}"})
    return cells


def command(bench: Bench, key: str, c: dict, out: Path) -> list[str]:
    size, steps, batch = str(c["size"]), str(c["steps"]), str(c["batch"])
    if key.startswith("sdcli"):
        cmd = bench.sdcli_gen(str(out), "--json", *SDCLI_FLAGS[key])
        for flag, value in (("--steps", steps), ("--H", size), ("--W", size), ("--n_samples", batch)):
            cmd[cmd.index(flag) + 1] = value
        return cmd
    if key == "reference":
        out.mkdir(parents=True, exist_ok=True)
        return [PYTHON, REFERENCE, bench.model, PROMPT, steps, size, size, "42", "ddim", str(out / "00000.png"),
                "--batch", batch, "--timings"]
    common_args = ["--model", bench.model, "--out", str(out), "--height", size, "--width", size, "--steps", steps,
                   "--batch", batch, "--seed", "42", "--prompt", PROMPT]
    if key.startswith("ov-"):
        prec, weights = {"ov-f32": ("f32", "fp32"), "ov-bf16": ("bf16", "fp32"), "ov-int8": ("f32", "int8")}[key]
        return [str(common.venv_python("optimum")), str(PEERS_DIR / "ov_run.py"), *common_args,
                "--precision", prec, "--weights", weights]
    return [str(common.venv_python("sdcpp")), str(PEERS_DIR / "sdcpp_run.py"), *common_args,
            "--wtype", key.split("-", 1)[1], "--quiet"]


def images_of(key: str, out: Path, batch: int) -> list[Path]:
    if key.startswith("sdcli"):
        return [out / "samples" / f"{k:05d}.png" for k in range(batch)]
    if key == "reference":
        return [out / ("00000.png" if k == 0 else f"00000-{k}.png") for k in range(batch)]
    return [out / f"{k:05d}.png" for k in range(batch)]


def prepare(bench: Bench, peer: str, keys: set) -> dict:
    """Unmeasured, once: OpenVINO's export (fp32 IR, text encoder checked; int8 IR if wanted), sd.cpp's single file."""
    py = str(common.venv_python(peer))
    if peer == "optimum":
        steps = [[py, str(PEERS_DIR / "ov_run.py"), "--model", bench.model, "--out", str(bench.out("ov-prep")),
                  "--weights", w, "--export-only"] for w in ("fp32", "int8") if w == "fp32" or "ov-int8" in keys]
    else:
        steps = [[py, str(PEERS_DIR / "to_single_file.py"), bench.model]]
    info = {"seconds": 0.0, "exported": []}
    for argv in steps:
        log(f"peers: preparing {peer}: {' '.join(Path(a).name if '/' in a else a for a in argv[1:])}")
        r = run_once(argv, bench.env, bench.args.timeout)
        info["seconds"] += r.seconds
        if r.rc:
            info["error"] = f"preparing failed (exit {r.rc}): " + _last_line(r.stderr)
            return info
        meta = common.last_json(r.stdout)
        if meta:
            info["exported"].append({k: meta.get(k) for k in ("weights", "export_s", "const_types",
                                                               "text_encoder_max_abs_diff")})
        lines = r.stdout.strip().splitlines()
        _warm(Path(meta["ir"]) if meta else Path(lines[-1]) if lines else None)
    info["seconds"] = round(info["seconds"], 1)
    return info


def prepare_sdcli(bench: Bench, keys: set, c: dict) -> Optional[dict]:
    """Unmeasured, once, as the peers' exports: one sdcli run through OpenVINO (1 step, the first cell's size), so
    its conversion cache exists (the first run of a model converts it, ~35 s) and is read into the page cache."""
    if not keys & {"sdcli-default", "sdcli-ov", "sdcli-ov-bf16"}:
        return None
    argv = command(bench, "sdcli-ov", c, bench.out("peers-sdcli-prep"))
    argv[argv.index("--steps") + 1] = "1"
    log("peers: preparing sdcli: one unmeasured --backend openvino run (converts the model once, if not cached)")
    r = run_once(argv, bench.env, bench.args.timeout)
    converted = "converted in" in (r.stderr or "")
    return {"seconds": round(r.seconds, 1), "rc": r.rc, "converted": converted,
            **({"error": _last_line(r.stderr)} if r.rc else {})}


def _warm(path: Optional[Path]) -> None:
    """Read a peer's converted model once, as bench.warm_cache does the folder: no measured run pays the disk."""
    files = [] if path is None else [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:300]


def measure(bench: Bench, grid: Optional[str] = None, runs: Optional[int] = None) -> dict:
    """The grid (default: the option, else DEFAULT_GRID) with ``runs`` runs per entry and cell (default: the
    option, else 1)."""
    bench.ensure_model()
    bench.warm_cache()
    smoke = bench.args.smoke
    allowed = [k for k in option(bench, "entries", ",".join(DEFAULT_ENTRIES)).split(",") if k in ENTRIES]
    grid = grid or option(bench, "grid", SMOKE_GRID if smoke else DEFAULT_GRID)
    cells = parse_grid(grid, allowed)
    runs = runs or int(option(bench, "runs", "1"))
    keys = {k for c in cells for k in c["entries"]}
    wanted = {ENTRIES[k][1] for k in keys} - {None}
    peers = {}
    for peer in sorted(wanted):
        st = common.read_status(peer)
        peers[peer] = {k: st.get(k) for k in ("ok", "reason", "versions", "install_s", "build_s", "build_jobs", "when")}
        if st.get("ok"):
            peers[peer]["prepare"] = prepare(bench, peer, keys)
            if peers[peer]["prepare"].get("error"):
                peers[peer]["ok"], peers[peer]["reason"] = False, peers[peer]["prepare"]["error"]
        log(f"peers: {peer}: " + ("ready" if peers[peer]["ok"] else f"skipped: {peers[peer]['reason']}"))
    sdcli_prep = prepare_sdcli(bench, keys, cells[0]) if not smoke else None
    out_cells = []
    for c in cells:
        run_keys = [k for k in c["entries"] if ENTRIES[k][1] is None or peers[ENTRIES[k][1]]["ok"]]
        specs = []
        for k in run_keys:
            def make(i: int, k=k, c=c) -> list[list[str]]:
                return [command(bench, k, c, bench.out(f"peers-{c['name']}-{k}-{i}"))]
            shown = bench.show(make(0)[0]).replace(str(common.peers_dir()), "$PEERS")
            specs.append(Spec(f"peers:{c['name']}:{k}", f"{ENTRIES[k][0]} [{c['name']}]", make, shown))
        log(f"peers: cell {c['name']}: {len(specs)} commands x {runs} runs, alternated")
        before = len(bench.failures)
        bench.alternate(specs, runs)
        # a peer that fails is reported in its row, not as an unexpected exit of sdcli's bench
        bench.failures[before:] = [f for f in bench.failures[before:] if not any(
            f.startswith(s.label) for s in specs if ENTRIES[s.key.rsplit(":", 1)[1]][1])]
        base = images_of("sdcli", bench.out(f"peers-{c['name']}-sdcli-0"), c["batch"])
        rows = []
        for k, s in zip(run_keys, specs):
            rows.append(_row(k, s, c, base, bench))
        out_cells.append({**{x: c[x] for x in ("name", "size", "steps", "batch")}, "rows": rows,
                          "not_run": [k for k in c["entries"] if k not in run_keys]})
    return {"runs": runs, "smoke": smoke, "peers": peers, "cells": out_cells, "grid": grid, "sdcli_prepare": sdcli_prep}


def _row(key: str, s: Spec, c: dict, base: list[Path], bench: Bench) -> dict:
    reports = [common.last_json(r.stdout) or {} for r in s.runs]
    sdcli = key.startswith("sdcli")
    t = [(x.get("timings") or {}) if sdcli else x for x in reports]
    load = [x.get("load_s", 0) + (x.get("compile_s") or 0) for x in t if x.get("load_s") is not None]
    per_image = [x["per_image_s"] for x in t if x.get("per_image_s") is not None]
    diffs = [compare(a, b) for a, b in zip(base, images_of(key, bench.out(f"peers-{c['name']}-{key}-0"), c["batch"]))]
    known = [d for d in diffs if d.get("max_abs_diff") is not None]
    row = {**s.as_json(), "key": key, "load_s": load, "per_image_s": per_image,
           "compile_s": [x["compile_s"] for x in t if x.get("compile_s") is not None],
           "pixels": None if key == "sdcli" else {
               "max_abs_diff": max(d["max_abs_diff"] for d in known) if known else None,
               "mean_abs_diff": round(statistics.mean(d["mean_abs_diff"] for d in known), 3) if known else None,
               "images": len(known), "note": None if known else (diffs[0].get("note") if diffs else "no image")}}
    if not s.ok:
        row["error"] = _last_line(s.stderr0())
    extra = reports[0] if reports else {}
    row["detail"] = {k: extra.get(k) for k in ("unet_inference_precision", "threads", "ir_const_types", "version",
                                               "openvino", "sampler", "import_s") if extra.get(k) is not None}
    if sdcli:  # what sdcli ran (auto's choices): from its manifest
        line = next(iter((bench.out(f"peers-{c['name']}-{key}-0") / "manifest.jsonl").read_text().splitlines()), "") \
            if (bench.out(f"peers-{c['name']}-{key}-0") / "manifest.jsonl").is_file() else ""
        rec = json.loads(line) if line else {}
        row["detail"]["ran"] = f"{rec.get('backend', '?')}, {rec.get('precision', '?')}" if rec else None
    return row


def verdicts(d: dict) -> list[str]:
    """Per cell: the fastest entry (whole process, start to last image) and where sdcli's defaults stand."""
    out = []
    for c in d["cells"]:
        ok = [r for r in c["rows"] if r.get("median_s") and not r.get("error")]
        default = next((r for r in ok if r["key"] == "sdcli-default"), None)
        if not ok or default is None:
            continue
        best = min(ok, key=lambda r: r["median_s"])
        name = lambda r: r["label"].rsplit(" [", 1)[0]
        gen = min((r for r in ok if r["per_image_s"]), key=lambda r: _med(r["per_image_s"]))
        out.append(f"- {c['size']} px, {c['steps']} steps, batch {c['batch']}: fastest process {name(best)} "
                   f"{fmt_s(best['median_s'])} s; sdcli's defaults {fmt_s(default['median_s'])} s "
                   f"({default['median_s'] / best['median_s']:.2f}x); fastest generation per image {name(gen)} "
                   f"{fmt_s(_med(gen['per_image_s']))} s, sdcli's defaults {fmt_s(_med(default['per_image_s']))} s.")
    return out


def _med(xs: list) -> Optional[float]:
    return statistics.median(xs) if xs else None


def render(d: dict) -> list[str]:
    rows = []
    for c in d["cells"]:
        for r in c["rows"]:
            px = r.get("pixels")
            img = ("(the reference)" if px is None else f"n/a ({px.get('note')})" if px.get("max_abs_diff") is None
                   else "identical" if px["max_abs_diff"] == 0 else f"max {px['max_abs_diff']} / mean {px['mean_abs_diff']}")
            notes = []
            if (r.get("detail") or {}).get("ran"):
                notes.append(f"ran {r['detail']['ran']}")
            if r.get("compile_s"):
                notes.append(f"load includes compile {fmt_s(_med(r['compile_s']))}s")
            if r.get("error"):
                notes.append("**failed**: " + code(r["error"]))
            rows.append([f"{c['size']} px, {c['steps']} steps, batch {c['batch']}", r["label"].rsplit(" [", 1)[0],
                         fmt_s(_med(r["load_s"])), fmt_s(_med(r["per_image_s"])), fmt_s(r["median_s"]) + cell(r),
                         fmt_range(r["seconds"]), fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"]), img, "; ".join(notes)])
        for k in c.get("not_run", []):
            rows.append([f"{c['size']} px, {c['steps']} steps, batch {c['batch']}", ENTRIES[k][0], "", "", "not run",
                         "", "", "", "", "", "peer not available (below)"])
    L = section("Peers: other CPU tools on the same work",
                "The same txt2img (the prompt of the overhead section, seed 42, image k seeded 42+k, CFG 7.5, negative "
                "prompt \"\", DDIM-like sampling, safety checker and watermark off) through sdcli, the diffusers "
                "reference script, OpenVINO via optimum-intel and stable-diffusion.cpp via its Python binding, each "
                "peer in its own venv (`python3.11 benchmarks/peers/setup.py all`), alternated within each cell, "
                f"{runs_text(d['runs'])} each (grid `{d['grid']}`). `load s`: the tool's own model load (sdcli's "
                "--json `timings.load_s`; the others print theirs; OpenVINO: read the IR, fix the shapes, compile); "
                "`gen s / image`: the tool's generation time (text encoding, steps, decode, writing the PNGs) per "
                "image; `process s`: the whole process, start to the last image written (interpreter, imports, load, "
                "generation). `image vs sdcli fp32`: max / mean abs pixel difference (0..255) to sdcli's fp32 image "
                "of the same cell, over the batch. " + NOISE_NOTE,
                ["cell", "what", "load s", "gen s / image", "process s", "min / max s", "CPU s", "others' CPU s", "peak RSS",
                 "image vs sdcli fp32", "notes"], rows)
    L += verdicts(d)
    if d.get("smoke"):
        L.append("- Smoke run: sdcli and the reference script only (the tiny model is no SD 1.x for the peers).")
    for name, p in sorted(d["peers"].items()):
        v = ", ".join(f"{k} {x}" for k, x in (p.get("versions") or {}).items() if x)
        if not p.get("ok"):
            L.append(f"- **{name}: not measured**: {p.get('reason')}")
            continue
        prep = p.get("prepare") or {}
        ex = "; ".join(f"{e['weights']} IR exported in {e['export_s']:.0f}s" if e.get("export_s") else
                       f"{e['weights']} IR cached" for e in prep.get("exported", []))
        te = next((e["text_encoder_max_abs_diff"] for e in prep.get("exported", [])
                   if e.get("text_encoder_max_abs_diff") is not None), None)
        L.append(f"- {name}: {v}; installed in {p.get('install_s')}s" + (f" (build {p['build_s']}s on {p.get('build_jobs')} "
                 "core(s))" if p.get("build_s") else "") + (f"; {ex}" if ex else "")
                 + (f"; exported text encoder vs PyTorch: max abs diff {te:.2g}" if te is not None else "") + ".")
    prep = d.get("sdcli_prepare")
    if prep:
        L.append("- sdcli: one unmeasured `--backend openvino` run before the cells (as the peers' exports), "
                 + (f"which converted the model ({prep['seconds']:.0f} s in all)" if prep.get("converted")
                    else f"which found the conversion cached ({prep['seconds']:.0f} s)")
                 + (f"; it **failed**: {code(prep['error'])}" if prep.get("error") else "") + ".")
    L += ["- The reference script's `load s` is `from_pretrained` alone: diffusers maps the safetensors lazily, so "
          "reading the weights lands in its first step (`gen s`); compare its `process s`.",
          "- OpenVINO: the IR is exported once (fp32 weights; int8 = NNCF weight compression of it) and not timed; "
          "shapes are fixed by `reshape` before compiling; `INFERENCE_PRECISION_HINT` is set explicitly (f32, or "
          "bf16), as OpenVINO otherwise runs bf16 on a CPU with AVX-512 BF16. Same torch generators as diffusers, so "
          "the starting latents are the same.",
          "- sd.cpp: the folder converted once to an original-LDM single file (`benchmarks/peers/to_single_file.py`, "
          "fp32; f16/q8_0/q4_0 are converted at load, inside `load s`); sampler `ddim_trailing`, rng `cpu` (torch's "
          "CPU randn), images one after another. Its pixels cannot match: it tokenises with the real CLIP vocabulary "
          "(the bench model has a byte-level tokenizer) and its DDIM timesteps are trailing, not leading.", ""]
    return L
