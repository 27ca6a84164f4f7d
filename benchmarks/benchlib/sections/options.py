"""Options: each speed/memory option of sdcli txt2img against the plain command (ratio, peak RSS, pixels; the
compile time from sdcli's log), and --offload model, which on a CPU must exit 2 with one clear error line."""

from __future__ import annotations

import re
import statistics

from ..context import Bench
from ..harness import Spec, log, paired, parse_float, ratio, run_once, tail
from ..markdown import (NOISE_NOTE, cell, code, fmt_cpu, fmt_mib, fmt_noise, fmt_pixels, fmt_range, fmt_s, fmt_x,
                        runs_text, section)
from ..paths import SDCLI
from ..pixels import compare, sample

NAME = "options"
# Flags added to the plain overhead command. --offload is expected to fail on a CPU.
OPTIONS = [
    ("attention slicing", ["--attention-slicing"]),
    ("VAE slicing", ["--vae-slicing"]),
    ("VAE tiling", ["--vae-tiling"]),
    ("channels last", ["--channels-last"]),
    ("torch.compile", ["--compile"]),
    ("bf16", ["--precision", "bf16"]),
    ("--precision auto (the default)", ["--precision", "auto"]),
]
OFFLOAD = ("model offload", ["--offload", "model"])
COMPILE_RE = re.compile(r"compiled the UNet in ([0-9.]+)s")


def measure(bench: Bench) -> dict:
    bench.ensure_model()
    bench.warm_cache()
    a = bench.args
    help_text = run_once([SDCLI, "txt2img", "--help"], bench.env, 60).stdout
    available = lambda flags: all(re.search(re.escape(f) + r"\b", help_text) for f in flags if f.startswith("--"))
    plain = bench.sdcli_spec("options:plain", "plain", "opt-plain")
    specs, missing = [plain], []
    for label, flags in OPTIONS:
        if not available(flags):
            missing.append(_missing(label, flags))
            continue
        slug = re.sub(r"\W+", "-", label)
        specs.append(bench.sdcli_spec(f"options:{slug}", label, f"opt-{slug}", *flags, shown=" ".join(flags)))
    log(f"options: {len(specs)} commands x {a.options_runs} runs, alternated"
        + (f"; not in this sdcli: {', '.join(m['flags'] for m in missing)}" if missing else ""))
    bench.alternate(specs, a.options_runs)
    plain_png = sample(bench.out("opt-plain-0"))
    rows = [{**plain.as_json(), "flags": "", "ratio_to_plain": 1.0}]
    for s in specs[1:]:
        slug = s.key.split(":", 1)[1]
        row = {**s.as_json(), "flags": s.shown, "ratio_to_plain": ratio(s, plain), "paired_ratios": paired(s, plain),
               "pixels_vs_plain": compare(sample(bench.out(f"opt-{slug}-0")), plain_png)}
        times = [parse_float(COMPILE_RE, r.stderr) for r in s.runs]
        if "--compile" in s.shown:
            row["compile_s"] = times
        rows.append(row)
    # offload: CUDA only. On a CPU machine, expect exit 2 and one error line; with CUDA, measure it.
    offload = None
    label, flags = OFFLOAD
    if not available(flags):
        missing.append(_missing(label, flags))
    elif bench.cuda():
        s = bench.sdcli_spec("options:offload", label, "opt-offload", *flags, shown=" ".join(flags))
        bench.alternate([s], a.options_runs)
        rows.append({**s.as_json(), "flags": s.shown, "ratio_to_plain": ratio(s, plain)})
    else:
        offload = _offload_on_cpu(bench, label, flags)
    return {"runs": a.options_runs, "rows": rows, "missing": missing, "offload_cpu": offload}


def _missing(label: str, flags: list[str]) -> dict:
    return {"label": label, "flags": " ".join(flags), "status": "not in this sdcli"}


def _offload_on_cpu(bench: Bench, label: str, flags: list[str]) -> dict:
    """--offload on a CPU machine: one run, expecting exit 2 and one `sdcli: error:` line naming CUDA."""
    s = Spec("options:offload", label, lambda i: [bench.sdcli_gen(str(bench.out("opt-offload")), *flags)],
             " ".join(flags), expect_rc=2)
    log("options: --offload model on a CPU machine (expect exit 2, one error line)")
    bench.alternate([s], 1, guard=False)
    r = s.runs[0]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("sdcli: error:")]
    clear = r.rc == 2 and len(errors) == 1 and "Traceback" not in r.stderr and "cuda" in errors[0].lower()
    if not clear:
        bench.failures.append(f"--offload model on CPU: expected exit 2 and one 'sdcli: error:' line naming CUDA; "
                              f"got exit {r.rc}: {tail(r.stderr, 300)}")
    return {"label": label, "flags": s.shown, "rc": r.rc, "seconds": round(r.seconds, 3),
            "error_lines": errors, "stderr_lines": len(lines), "clear_error": clear}


def render(op: dict) -> list[str]:
    rows = []
    for r in op["rows"]:
        notes = []
        if "compile_s" in r:
            cs = [x for x in r["compile_s"] if x is not None]
            notes.append(f"compile {statistics.median(cs):.1f}s (sdcli's log)" if cs else "compile time n/a")
            if cs and len(cs) == len(r["seconds"]):
                rest = statistics.median(t - c for t, c in zip(r["seconds"], r["compile_s"]))
                plain_median = op["rows"][0]["median_s"]
                notes.append(f"without the compile {fmt_s(rest)}s ({fmt_x(rest / plain_median)} plain)")
        rows.append([r["label"], code(r["flags"]) if r["flags"] else "(plain)", fmt_s(r["median_s"]) + cell(r),
                     fmt_range(r["seconds"]), fmt_x(r["ratio_to_plain"]), fmt_cpu(r), fmt_noise(r), fmt_mib(r["rss_kib"]),
                     fmt_pixels(r.get("pixels_vs_plain")) if r["flags"] else "(reference)", "; ".join(notes)])
    off = op.get("offload_cpu")
    if off:
        msg = off["error_lines"][0] if off["error_lines"] else f"exit {off['rc']}"
        rows.append([off["label"], code(off["flags"]), f"{fmt_s(off['seconds'])} (exit {off['rc']})", "", "", "", "", "",
                     "", ("CUDA only: clear error: " if off["clear_error"] else "**not a clear error**: ") + code(msg)])
    for mi in op.get("missing", []):
        rows.append([mi["label"], code(mi["flags"]), "not measured", "", "", "", "", "", "", "this sdcli has no such option"])
    return section("Options",
                   "The overhead section's sdcli command (`--no-safety-checker --no-watermark`) with one option added, "
                   f"all alternated with the plain command; {runs_text(op['runs'])} each. Image: max abs pixel difference "
                   "to the plain run's PNG. " + NOISE_NOTE,
                   ["option", "flags", "median s", "min / max s", "ratio to plain", "CPU s", "others' CPU s", "peak RSS",
                    "image vs plain", "notes"], rows)
