"""Limits: the work per image (UNet and VAE FLOPs, torch's FlopCounterMode) against this CPU's measured peak in
fp32 and bf16 (benchmarks/flops.py), the shortest time per image that allows, and the fraction of it that each
entry of the peers section reaches (when that section ran in the same bench run)."""

from __future__ import annotations

import json

from ..context import Bench
from ..harness import log, run_once, tail
from ..markdown import section
from ..paths import HERE, PYTHON

NAME = "limits"
FLOPS = str(HERE / "flops.py")


def image_flops(flops: dict, size: int, steps: int) -> float:
    f = flops[str(size)]
    return steps * f["unet_cfg_step"] + f["vae_decode"]


def measure(bench: Bench) -> dict:
    bench.ensure_model()
    sizes = sorted({256, 512, bench.args.size})
    log(f"limits: FLOPs at {sizes} px and the CPU's peak (benchmarks/flops.py)")
    if bench.args.max_noise > 0:
        bench.wait_quiet()
    r = run_once([PYTHON, FLOPS, bench.model, "--sizes", ",".join(map(str, sizes)),
                  "--seconds", "0.5" if bench.args.smoke else "3"], bench.env, 1800)
    if r.rc != 0:
        bench.failures.append(f"limits: flops.py exited {r.rc}: {tail(r.stderr, 300)}")
        return {"error": tail(r.stderr, 300)}
    data = json.loads(r.stdout.strip().splitlines()[-1])
    data["entries"] = peer_entries((bench.results or {}).get("peers"))
    return data


def peer_entries(peers) -> list[dict]:
    """(label, size, steps, median seconds per image) of each entry the peers section measured."""
    import statistics

    out = []
    for c in (peers or {}).get("cells", []):
        for row in c.get("rows", []):
            if row.get("per_image_s"):
                out.append({"label": row["label"].rsplit(" [", 1)[0], "size": c["size"], "steps": c["steps"],
                            "batch": c["batch"], "per_image_s": statistics.median(row["per_image_s"])})
    return out


def render(d: dict) -> list[str]:
    if "error" in d:
        return section("Physical limit", f"benchmarks/flops.py failed: {d['error']}", [], [])
    peak = d["peak_gflops"]
    best = {p: max(peak[p].values()) for p in peak}
    rows = []
    for size in sorted(d["flops"], key=int):
        f = d["flops"][size]
        for steps in (4, 20):
            total = image_flops(d["flops"], int(size), steps)
            rows.append([f"{size} px, {steps} steps", f"{f['unet_cfg_step'] / 1e9:,.0f}", f"{f['vae_decode'] / 1e9:,.0f}",
                         f"{total / 1e12:.2f}", f"{total / best['fp32'] / 1e9:.1f}", f"{total / best['bf16'] / 1e9:.1f}"])
    lines = section(
        "Physical limit",
        f"Work per image from torch's FlopCounterMode (one UNet call at batch 2 = one CFG step; the VAE decode) on the "
        f"benchmark model, against this CPU's peak measured with {d['threads']} threads (`benchmarks/flops.py`): "
        f"fp32 {peak['fp32']['conv3x3']:.0f} GFLOP/s on a 3x3 convolution, {peak['fp32']['matmul']:.0f} on a matmul; "
        f"bf16 {peak['bf16']['conv3x3']:.0f} / {peak['bf16']['matmul']:.0f}. The limit uses the better of the two per "
        "precision (text encoder, scheduler and safety checker not counted).",
        ["image", "UNet GFLOP per CFG step", "VAE decode GFLOP", "TFLOP per image", "limit s (fp32)", "limit s (bf16)"],
        rows)
    if d.get("entries"):
        ent = []
        for e in d["entries"]:
            total = image_flops(d["flops"], int(e["size"]), int(e["steps"])) if str(e["size"]) in d["flops"] else None
            if total is None:
                continue
            rate = total / e["per_image_s"] / 1e9
            ent.append([e["label"], f"{e['size']} px, {e['steps']} steps, batch {e['batch']}", f"{e['per_image_s']:.2f}", f"{rate:,.0f}",
                        f"{100 * rate / best['fp32']:.0f} %", f"{100 * rate / best['bf16']:.0f} %"])
        lines += [""] + section("Fraction of the limit (peers section)", "Achieved GFLOP/s = the image's FLOPs over its "
                                "generation time per image.", ["entry", "image", "s per image", "GFLOP/s",
                                                               "of fp32 peak", "of bf16 peak"], ent)
    return lines
