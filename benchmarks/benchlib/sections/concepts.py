"""Concepts (issue 10): what one LoRA (loaded, and fused), one textual-inversion embedding and a long weighted
prompt cost on top of the plain command: model load and per-image time from sdcli's --json timings, the whole
process, peak RSS, and the image's difference from the plain run."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from ..context import Bench
from ..harness import log, paired, ratio
from ..markdown import NOISE_NOTE, cell, code, fmt_mib, fmt_noise, fmt_pixels, fmt_range, fmt_s, fmt_x, runs_text, section
from ..paths import ROOT
from ..pixels import compare, sample

NAME = "concepts"
LORA_RANK = 16
# ~200 CLIP tokens with A1111 weights: three 75-token chunks.
LONG = ("a (detailed:1.2) oil painting of a lighthouse on a rocky coast at dusk, [blurry], (dramatic clouds:1.3), "
        "waves breaking on black rocks, warm light in the lantern room, gulls over the water, a small boat "
        "with a red sail in the distance, wet stones reflecting the sky, long shadows, mist over the sea, "
        "by a 19th century marine painter, thick brush strokes, muted blues and greens, golden highlights, "
        "(high contrast:0.8), cinematic composition, wide angle, a path of stones leading to the door, "
        "a weathered wooden fence, grass bent by the wind, the first stars in a violet sky, a lit window, "
        "rain clouds far away, a calm bay behind the cliffs, fishermen's huts with smoke from the chimneys")


def measure(bench: Bench) -> dict:
    model = bench.ensure_model()
    bench.warm_cache()
    sys.path.insert(0, str(ROOT / "tests"))
    from concept_files import make_embedding, make_lora  # the tests' builders: real formats via peft

    folder = bench.out("concept-files")
    lora = folder / "style.safetensors"
    emb = folder / "bench-thing.safetensors"
    if not lora.exists():
        log(f"concepts: building a rank-{LORA_RANK} LoRA (UNet + text encoder) and a 2-vector embedding")
        make_lora(model, lora, rank=LORA_RANK, std=0.01)
        width = json.loads((Path(model) / "text_encoder" / "config.json").read_text())["hidden_size"]
        make_embedding(emb, dim=width, vectors=2, token="<bench-thing>")
    variants = [
        ("plain", [], {}),
        ("one LoRA", ["--lora", f"{lora}:0.8"], {}),
        ("one LoRA, fused", ["--lora", f"{lora}:0.8", "--fuse-lora"], {}),
        ("one embedding", ["--embedding", str(emb)], {"prompt": "a photo of <bench-thing>"}),
        ("long weighted prompt", [], {"prompt": LONG}),
        ("all three", ["--lora", f"{lora}:0.8", "--embedding", str(emb)], {"prompt": LONG + ", <bench-thing>"}),
    ]
    specs = []
    for label, flags, kw in variants:
        slug = label.replace(" ", "-").replace(",", "")
        specs.append(bench.sdcli_spec(f"concepts:{slug}", label, f"con-{slug}", "--json", *flags, **kw))
    runs = bench.args.options_runs
    log(f"concepts: {len(specs)} commands x {runs} runs, alternated")
    bench.alternate(specs, runs)
    plain = specs[0]
    plain_png = sample(bench.out("con-plain-0"))
    rows = []
    for spec in specs:
        slug = spec.key.split(":", 1)[1]
        timings = [_timings(r.stdout) for r in spec.runs]
        rows.append({**spec.as_json(), "ratio_to_plain": ratio(spec, plain), "paired_ratios": paired(spec, plain),
                     "load_s": [t.get("load_s") for t in timings], "per_image_s": [t.get("per_image_s") for t in timings],
                     "pixels_vs_plain": compare(sample(bench.out(f"con-{slug}-0")), plain_png) if spec is not plain else None})
    return {"runs": runs, "when": time.strftime("%Y-%m-%d %H:%M"), "lora_rank": LORA_RANK, "lora_mib": round(lora.stat().st_size / 2**20, 1), "rows": rows}


def _timings(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line).get("timings", {})
        except ValueError:
            continue
    return {}


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def render(data: dict) -> list[str]:
    plain = data["rows"][0]
    base_load, base_image = _median(plain["load_s"]), _median(plain["per_image_s"])
    rows = []
    for r in data["rows"]:
        load, image = _median(r["load_s"]), _median(r["per_image_s"])
        flags = r["command"].split("--json", 1)[1].strip() if "--json" in r["command"] else ""
        shown = code(flags) if flags else "(plain)" if r is plain else ""
        if "long" in r["label"] or "all" in r["label"]:
            shown += " + the ~200-token weighted prompt"
        rows.append([r["label"], shown.strip(" +"),
                     fmt_s(load), f"{load - base_load:+.2f}" if load is not None and base_load is not None and r is not plain else "",
                     fmt_s(image), fmt_x(image / base_image) if image and base_image else "",
                     fmt_s(r["median_s"]) + cell(r), fmt_range(r["seconds"]), fmt_x(r["ratio_to_plain"]), fmt_noise(r),
                     fmt_mib(r["rss_kib"]), fmt_pixels(r.get("pixels_vs_plain")) if r is not plain else "(reference)"])
    return section("Concepts: LoRA, embeddings, long weighted prompts",
                   f"The overhead section's sdcli command with one LoRA (rank {data['lora_rank']} on the UNet's attention "
                   f"and the text encoder, {data['lora_mib']} MiB, weight 0.8), the same fused (`--fuse-lora`), one "
                   "2-vector textual-inversion embedding used in the prompt, a ~200-token prompt with A1111 weights "
                   "(three 75-token chunks), and all three; alternated, " + runs_text(data["runs"]) + " each. `load s` "
                   "and `per image s` are sdcli's own --json timings (model + LoRA/embedding load; generation)"
                   + (f"; measured {data['when']}" if data.get("when") else "") + ". " + NOISE_NOTE,
                   ["variant", "flags", "load s", "load +s", "per image s", "per image x", "process s", "min / max s",
                    "process x", "others' CPU s", "peak RSS", "image vs plain"], rows)
