"""Overhead: sdcli txt2img against the ten-line diffusers script (target <= 1.03x), the pixels of the two, and
the seconds the safety checker and the watermark add."""

from __future__ import annotations

import re
import statistics
from typing import Optional

from ..context import Bench
from ..harness import log, paired, parse_float, ratio
from ..markdown import (NOISE_NOTE, command_cells, fmt_cpu, fmt_mib, fmt_noise, fmt_pixels, fmt_x, runs_text, section,
                        verdict)
from ..pixels import compare, sample

NAME = "overhead"
LOADED_RE = re.compile(r"loaded in ([0-9.]+)s")
DEVICE_RE = re.compile(r"loading .* on (\S+), (\S+)")


def measure(bench: Bench) -> dict:
    bench.ensure_model()
    bench.warm_cache()
    a = bench.args
    specs = [
        bench.sdcli_spec("overhead:sdcli", "sdcli", "sdcli"),
        bench.reference_spec("overhead:reference", "ref"),
        bench.sdcli_spec("overhead:safety", "sdcli + safety checker", "safety", safety=True),
        bench.sdcli_spec("overhead:watermark", "sdcli + watermark", "watermark", watermark=True),
    ]
    log(f"overhead: {len(specs)} commands x {a.runs} runs, alternated ({a.steps} steps, {a.size} px)")
    bench.alternate(specs, a.runs)
    sd, ref, safety, wm = specs
    bench.overhead_specs = {"sdcli": sd, "reference": ref, "safety": safety}
    same = compare(sample(bench.out("sdcli-0")), bench.out("ref-0.png"))
    repeat = compare(sample(bench.out("sdcli-0")), sample(bench.out("sdcli-1"))) if a.runs > 1 else None
    rows = [ref.as_json(), sd.as_json(), safety.as_json(), wm.as_json()]
    for row, s in zip(rows, (ref, sd, safety, wm)):
        row["ratio_to_reference"] = ratio(s, ref)
        row["paired_ratios"] = paired(s, ref)
        row["sdcli_load_s"] = [parse_float(LOADED_RE, r.stderr) for r in s.runs] if s is not ref else None
    for row, s in ((rows[2], safety), (rows[3], wm)):
        row["added_s_vs_sdcli"] = round(s.median() - sd.median(), 3) if s.runs and sd.runs else None
    flagged = "NSFW" in safety.stderr0()
    m = DEVICE_RE.search(sd.stderr0())
    bench.device = m.group(1) if m else None
    return {"runs": a.runs, "steps": a.steps, "size": a.size, "rows": rows, "target_ratio": 1.03,
            "ratio": ratio(sd, ref), "pixels": same, "repeat_pixels": repeat, "safety_flagged": flagged,
            "device": bench.device, "precision": m.group(2) if m else None}


def render(o: dict) -> list[str]:
    rows = []
    for r in o["rows"]:
        extra = []
        if r.get("added_s_vs_sdcli") is not None:
            extra.append(f"+{r['added_s_vs_sdcli']:.2f}s vs sdcli" if r["added_s_vs_sdcli"] >= 0
                         else f"{r['added_s_vs_sdcli']:.2f}s vs sdcli")
        if r.get("discarded_noisy_s"):
            extra.append(f"{len(r['discarded_noisy_s'])} noisy run(s) repeated")
        loads = [x for x in (r.get("sdcli_load_s") or []) if x is not None]
        if loads:
            extra.append(f"model load (sdcli's log) {statistics.median(loads):.1f}s")
        rows.append(command_cells(r) + [fmt_x(r["ratio_to_reference"]), ", ".join(f"{x:.3f}" for x in r["paired_ratios"]),
                                        fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"]), "; ".join(extra)])
    L = section("Overhead: sdcli vs the ten-line diffusers script",
                f"One image, {o['steps']} DDIM steps, {o['size']}x{o['size']}, seed 42, guidance 7.5, fp32; "
                f"{runs_text(o['runs'])} each, alternated. `benchmarks/reference.py` is the plain diffusers script "
                "(StableDiffusionPipeline, DDIM with clip_sample off, a seeded CPU generator, save the PNG). "
                "Target: sdcli / reference <= 1.03. " + NOISE_NOTE,
                ["what", "command", "median s", "min / max s", "ratio to reference", "paired", "CPU s", "others' CPU s",
                 "peak RSS", "notes"], rows)
    px = o.get("pixels") or {}
    L += [f"- **sdcli / reference (median): {fmt_x(o['ratio'])}** (target <= 1.03: {verdict(o['ratio'], 1.03)}); "
          f"median of the paired ratios {fmt_x(paired_median(o))}.",
          f"- Same pixels as the reference: **{'yes' if px.get('identical') else 'no' if px.get('identical') is False else 'n/a'}** "
          f"({fmt_pixels(px)}).",
          ]
    if o.get("repeat_pixels"):
        L += [f"- sdcli run 1 vs run 2: {fmt_pixels(o['repeat_pixels'])}."]
    added = {r["label"]: r.get("added_s_vs_sdcli") for r in o["rows"]}
    L += [f"- Safety checker on: {fmt_added(added.get('sdcli + safety checker'))}; watermark on: "
          f"{fmt_added(added.get('sdcli + watermark'))} (medians vs the run with both off)."
          + (" The random-weight checker flagged the image (replaced by black); that costs nothing extra."
             if o.get("safety_flagged") else "")]
    if o["size"] * o["size"] < 256 * 256:
        L += ["- Under 256x256 the watermark is skipped (the library refuses), so its row measures nothing extra."]
    return L + [""]


def paired_median(o: dict) -> Optional[float]:
    xs = next((r["paired_ratios"] for r in o["rows"] if r["label"] == "sdcli"), None)
    return statistics.median(xs) if xs else None


def fmt_added(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:+.2f}s"
