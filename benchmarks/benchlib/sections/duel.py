"""Duel (issue 14): sdcli's defaults against the fastest peer of the peers section (OpenVINO bf16 through
optimum-intel), head to head: the same cells, more runs, alternated, so the verdict does not rest on one run each.
The peers section has every entry once, with the image differences; this one has the two that decide the target.

Options (environment variables, or the same-named bench.py flags where main.py defines them):
  SDCLI_BENCH_DUEL_GRID   cells "SIZE:STEPS:BATCH", comma-separated [DEFAULT_GRID]
  SDCLI_BENCH_DUEL_RUNS   runs per entry and cell [3]
"""

from __future__ import annotations

import os
import statistics

from ..context import Bench
from ..markdown import fmt_mib, fmt_range, fmt_s, runs_text, section
from . import peers

NAME = "duel"
PAIR = ("sdcli-default", "ov-bf16")
DEFAULT_GRID = "256:4:1,256:4:4,512:4:1,512:20:1"
SMOKE_GRID = "64:2:1"


def option(bench: Bench, name: str, default: str) -> str:
    return str(getattr(bench.args, f"duel_{name}", None) or os.environ.get(f"SDCLI_BENCH_DUEL_{name.upper()}") or default)


def measure(bench: Bench) -> dict:
    grid = option(bench, "grid", SMOKE_GRID if bench.args.smoke else DEFAULT_GRID)
    pair = PAIR if not bench.args.smoke else ("sdcli-default", "sdcli")  # the tiny model is no SD 1.x for OpenVINO
    cells = ",".join(f"{c.split('=')[0]}={'+'.join(pair)}" for c in grid.split(",") if c.strip())
    d = peers.measure(bench, grid=cells, runs=int(option(bench, "runs", "3")))
    d["pair"] = list(pair)
    return d


def render(d: dict) -> list[str]:
    mine, theirs = d["pair"]
    labels = {k: peers.ENTRIES[k][0] for k in d["pair"]}
    rows, ratios = [], []
    for c in d["cells"]:
        by = {r["key"]: r for r in c["rows"] if not r.get("error") and r.get("median_s")}
        if mine not in by or theirs not in by:
            rows.append([f"{c['size']} px, {c['steps']} steps, batch {c['batch']}"] + ["n/a"] * 7)
            continue
        a, b = by[mine], by[theirs]
        ratio = a["median_s"] / b["median_s"]
        ratios.append(ratio)
        med = lambda r: fmt_s(statistics.median(r["per_image_s"])) if r["per_image_s"] else "n/a"
        rows.append([f"{c['size']} px, {c['steps']} steps, batch {c['batch']}",
                     f"{fmt_s(a['median_s'])} ({fmt_range(a['seconds'])})",
                     f"{fmt_s(b['median_s'])} ({fmt_range(b['seconds'])})", f"**{ratio:.2f}x**",
                     med(a), med(b), fmt_mib(a["rss_kib"]), fmt_mib(b["rss_kib"])])
    L = section(f"Duel: sdcli's defaults vs {labels[theirs]}",
                f"The two entries that decide issue 14's target, alternated, {runs_text(d['runs'])} each per cell "
                f"(settings as in the peers section). `process s`: the whole process, start to the last image written, "
                "median (min / max); `ratio`: sdcli over the peer (below 1: sdcli is faster); `gen s / image`: each "
                "tool's own generation time (sdcli's includes compiling the OpenVINO model for the image size, the "
                "peer's compile is in its load).",
                ["cell", f"{mine} process s", f"{theirs} process s", "ratio", f"{mine} gen s / image",
                 f"{theirs} gen s / image", f"{mine} peak RSS", f"{theirs} peak RSS"], rows)
    if ratios:
        L.append(f"- Geometric mean ratio over the cells: {statistics.geometric_mean(ratios):.2f}x.")
    if d.get("smoke"):
        L.append("- Smoke run: sdcli's defaults against sdcli fp32 on the tiny model (no OpenVINO peer).")
    for name, p in sorted(d["peers"].items()):
        if not p.get("ok"):
            L.append(f"- **{name}: not measured**: {p.get('reason')}")
    return L + [""]
