"""Scale-out (issue 11): one prompt file rendered by 1 process, by 2 and 3 processes under torchrun (CPU, gloo),
and by --shard 1/2 + 2/2 started together; wall time of the whole command (model loads included) and whether
every job id maps to the same pixels as the one-process run with the same threads per process."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..context import Bench
from ..harness import Spec, log, ratio
from ..markdown import NOISE_NOTE, cell, code, fmt_mib, fmt_noise, fmt_range, fmt_s, fmt_x, runs_text, section
from ..paths import PYTHON, SDCLI

NAME = "scaleout"
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star"]
JOBS = 48


def _prompts(folder: Path, smoke: bool) -> Path:
    n = 5 if smoke else JOBS
    lines = [f"a {COLOURS[i % 8]} {SHAPES[i % 4]} on a {COLOURS[(i + 3) % 8]} background" for i in range(n)]
    path = folder / "scaleout-prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(bench: Bench) -> dict:
    smoke = bench.args.smoke
    model = bench.ensure_model() if smoke else "demo"  # the demo model: real pictures, its native 128 px
    bench.tmp.mkdir(exist_ok=True)
    prompts = _prompts(bench.tmp, smoke)
    size = ["--H", "64", "--W", "64", "--steps", "2"] if smoke else []

    def gen(outdir: str, *extra: str) -> list[str]:
        return ["txt2img", "--model", model, "--from-file", str(prompts), "--n_samples", "1", "--n_iter", "1",
                "--seed", "3", *size, "--outdir", outdir, "--json", "-q", *extra]

    def threads(n: int) -> list[str]:
        return ["env", f"OMP_NUM_THREADS={n}"]

    def torchrun(n: int, outdir: str) -> list[str]:
        return [*threads(1), PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                "-m", "sdcli", *gen(outdir)]

    def shards_together(outdir: str) -> list[str]:
        one = " ".join(gen(outdir))
        script = f"{SDCLI} {one} --shard 1/2 > {outdir}.1.json & {SDCLI} {one} --shard 2/2 > {outdir}.2.json; wait"
        return [*threads(1), "bash", "-c", script]

    variants = [
        ("one process, 2 threads", "so-one2", lambda o: [*threads(2), SDCLI, *gen(o)]),
        ("one process, 1 thread", "so-one1", lambda o: [*threads(1), SDCLI, *gen(o)]),
        ("torchrun, 2 processes x 1 thread", "so-tr2", lambda o: torchrun(2, o)),
        ("torchrun, 3 processes x 1 thread", "so-tr3", lambda o: torchrun(3, o)),
        ("--shard 1/2 + 2/2 together, 1 thread each", "so-sh2", shards_together),
    ]
    specs = []
    for label, name, make in variants:
        def cmds(i: int, name=name, make=make) -> list[list[str]]:
            return [make(str(bench.out(f"{name}-{i}")))]

        shown = bench.show(make(str(bench.out(f"{name}-0"))))
        if name == "so-sh2":  # the shell line, spelt as the others
            one = bench.show([SDCLI, *gen(str(bench.out(f"{name}-0")))])
            shown = f"OMP_NUM_THREADS=1 {one} --shard 1/2 & OMP_NUM_THREADS=1 {one} --shard 2/2; wait"
        specs.append(Spec(f"scaleout:{name}", label, cmds, shown))
    runs = bench.args.options_runs
    log(f"scaleout: {len(specs)} commands x {runs} runs, alternated; {prompts.read_text().count(chr(10))} jobs each")
    bench.alternate(specs, runs)
    reference = _pixel_map(bench.out("so-one1-0"))
    rows = []
    for (label, name, _), spec in zip(variants, specs):
        mine = _pixel_map(bench.out(f"{name}-0"))
        rows.append({**spec.as_json(), "ratio_to_one": ratio(spec, specs[0]), "jobs": len(mine),
                     "same_pixels_as_one_process_1_thread": mine == reference,
                     "differing_jobs": sum(1 for k, v in mine.items() if reference.get(k) != v),
                     "grids": len(list(bench.out(f"{name}-0").glob("grid-*")))})
    return {"runs": runs, "when": time.strftime("%Y-%m-%d %H:%M"), "model": "tiny" if smoke else "demo",
            "jobs": rows[0]["jobs"], "rows": rows}


def _pixel_map(outdir: Path) -> dict[str, str]:
    """job id -> sha256 of the decoded pixels; a job recorded twice is marked so the check fails."""
    from PIL import Image

    out: dict[str, str] = {}
    path = outdir / "manifest.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        if r.get("status") == "ok":
            with Image.open(outdir / r["path"]) as im:
                digest = hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()
            out[r["job_id"]] = "DUPLICATE" if r["job_id"] in out else digest
    return out


def render(data: dict) -> list[str]:
    rows = []
    for r in data["rows"]:
        same = "yes" if r["same_pixels_as_one_process_1_thread"] else f"no ({r['differing_jobs']} of {r['jobs']} differ)"
        rows.append([r["label"], code(r["command"]), fmt_s(r["median_s"]) + cell(r), fmt_range(r["seconds"]),
                     fmt_x(r["ratio_to_one"]), fmt_noise(r), fmt_mib(r["rss_kib"]), str(r["jobs"]), str(r["grids"]), same])
    return section("Scale-out: one prompt file, several processes",
                   f"{data['jobs']} jobs of a prompt file on the {data['model']} model (batch size 1), rendered by one "
                   "process, by torchrun with 2 and 3 processes (CPU, gloo) and by two `--shard` processes started "
                   "together; alternated, " + runs_text(data["runs"]) + " each. Wall time of the whole command, every "
                   "process's model load included; `x` is against one process with both cores. `same pixels`: every "
                   "job id maps to the pixels of the one-process run with one thread (CPU kernels may round "
                   "differently with another thread count; the split itself never changes a pixel). This machine has "
                   "2 cores, so 3 processes share them" + (f"; measured {data['when']}" if data.get("when") else "")
                   + ". " + NOISE_NOTE,
                   ["run", "command", "wall s", "min / max s", "x", "others' CPU s", "peak RSS", "images", "grids",
                    "same pixels"], rows)
