"""Memory: peak RSS of sdcli and the reference against the size of the weights they load (no second copy held).
Reuses the overhead section's runs when that section ran."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..context import Bench
from ..harness import log
from ..markdown import command_cell, fmt_gib, fmt_mib, fmt_x, section
from ..paths import dir_size

NAME = "memory"


def measure(bench: Bench) -> dict:
    bench.ensure_model()
    specs = bench.overhead_specs
    if specs is None:
        bench.warm_cache()
        sd = bench.sdcli_spec("memory:sdcli", "sdcli", "mem-sdcli")
        ref = bench.reference_spec("memory:reference", "mem-ref")
        log(f"memory: 2 commands x {bench.args.runs} runs, alternated")
        bench.alternate([sd, ref], bench.args.runs)
        specs = {"sdcli": sd, "reference": ref}
        measured_in = "memory"
    else:
        measured_in = "overhead"
    model = Path(bench.model)
    weights = {name: dir_size(model / name) for name in ("unet", "vae", "text_encoder", "safety_checker")
               if (model / name).is_dir()}
    loaded = sum(v for k, v in weights.items() if k != "safety_checker")
    rows = []
    for key, s in specs.items():
        w = loaded + (weights.get("safety_checker", 0) if key == "safety" else 0)
        rows.append({**s.as_json(), "weights_loaded_bytes": w,
                     "rss_over_weights": round(statistics.median(s.rss()) * 1024 / w, 3) if s.runs and w else None})
    return {"measured_in": measured_in, "model_bytes": dir_size(model), "weights_bytes": weights, "rows": rows}


def render(mm: dict) -> list[str]:
    rows = [[r["label"], command_cell(r), fmt_mib(r["rss_kib"]),
             f"{fmt_mib(min(r['rss_kib']))} / {fmt_mib(max(r['rss_kib']))}" if r["rss_kib"] else "n/a",
             fmt_gib(r["weights_loaded_bytes"]), fmt_x(r["rss_over_weights"])] for r in mm["rows"]]
    return section("Memory",
                   f"Peak RSS of the whole process (from the {mm['measured_in']} runs), against the size of the weights "
                   "it loads (fp32 safetensors on disk). A ratio well under 2 means loading does not hold two copies of "
                   f"the weights. The model folder holds {fmt_gib(mm['model_bytes'])} on disk ("
                   + ", ".join(f"{k} {fmt_gib(b)}" for k, b in mm["weights_bytes"].items()) + ").",
                   ["process", "command", "peak RSS (median)", "min / max", "weights loaded", "RSS / weights"], rows)
