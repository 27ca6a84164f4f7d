"""The command line and the run: options and their defaults, then each chosen section measured in turn, the
results JSON and the report written (or, with --render, only the report rewritten from a results JSON)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .context import Bench
from .harness import log
from .machine import git_commit, machine, versions
from .paths import HERE, ROOT, SDCLI, dir_size, display_path
from .report import report
from .sections import SECTIONS


def parse_args(argv=None):
    names = ", ".join(SECTIONS)
    ap = argparse.ArgumentParser(description="sdcli benchmarks -> BENCHMARKS.md", epilog=f"sections: {names}")
    ap.add_argument("--only", help="comma-separated sections to run [all]")
    ap.add_argument("--runs", type=int, default=None, help="runs per command for overhead, memory, options [3]")
    ap.add_argument("--options-runs", type=int, default=None, help="runs per command for options [--runs]")
    ap.add_argument("--startup-runs", type=int, default=None, help="runs per command for startup [10]")
    ap.add_argument("--batch-runs", type=int, default=None, help="runs per way for batch [1]")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps [4; smoke 2]")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels [256; smoke 64]")
    ap.add_argument("--model", help="diffusers model folder [full-size SD 1.5 random weights, built once; smoke: tiny]")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64 px, 2 steps, 1 run each (CI)")
    ap.add_argument("--output", help="markdown report [BENCHMARKS.md at the repo root]")
    ap.add_argument("--json", help="raw numbers [benchmarks/results.json; with --output: beside it, .json]")
    ap.add_argument("--timeout", type=float, default=1800, help="kill a command after this many seconds [1800]")
    ap.add_argument("--max-noise", type=float, default=None,
                    help="discard and repeat a run during which other processes used more than this many cores "
                         "(0 = keep every run) [0.1; smoke 0]")
    ap.add_argument("--retries", type=int, default=3, help="repeats of a noisy run [3]")
    ap.add_argument("--wait-quiet", type=float, default=300,
                    help="before each run, wait up to this many seconds for other processes to use <= --max-noise cores [300]")
    ap.add_argument("--peers-grid", help="peers: cells SIZE:STEPS:BATCH[=entry+entry...], comma-separated [the section's default]")
    ap.add_argument("--peers-entries", help="peers: only these entries, comma-separated [all]")
    ap.add_argument("--peers-runs", type=int, help="peers: runs per entry and cell [1]")
    ap.add_argument("--duel-grid", help="duel: cells SIZE:STEPS:BATCH, comma-separated [the section's default]")
    ap.add_argument("--duel-runs", type=int, help="duel: runs per entry and cell [3]")
    ap.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the markdown (--output) from a results JSON")
    a = ap.parse_args(argv)
    one = 1 if a.smoke else None
    a.runs = a.runs or one or 3
    a.startup_runs = a.startup_runs or one or 10
    a.options_runs = a.options_runs or a.runs
    a.batch_runs = a.batch_runs or 1
    a.steps = a.steps or (2 if a.smoke else 4)
    a.size = a.size or (64 if a.smoke else 256)
    if a.max_noise is None:
        a.max_noise = 0.0 if a.smoke else 0.1
    a.sections = tuple(SECTIONS) if not a.only else tuple(x.strip() for x in a.only.split(",") if x.strip())
    unknown = [x for x in a.sections if x not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {names}")
    if a.size % 8:
        ap.error("--size: must be a multiple of 8")
    a.output = Path(a.output).expanduser() if a.output else ROOT / "BENCHMARKS.md"
    a.json = Path(a.json).expanduser() if a.json else (a.output.with_suffix(".json") if a.output != ROOT / "BENCHMARKS.md"
                                                       else HERE / "results.json")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        args.output.write_text(keep_blocks(args.output, report(res)))
        log(f"wrote {args.output} from {args.render}")
        return 0
    t0 = time.perf_counter()
    import signal

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # so the running child is killed too (run_once)
    if not Path(SDCLI).exists():
        raise SystemExit(f"bench: no sdcli console script beside {sys.executable}; run `make install` and use the venv's python")
    bench = Bench(args)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res = {"argv": sys.argv[1:] if argv is None else list(argv), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "commit": git_commit(), "smoke": args.smoke, "machine": machine(), "versions": versions(),
           "settings": {"runs": args.runs, "options_runs": args.options_runs, "startup_runs": args.startup_runs, "batch_runs": args.batch_runs,
                        "steps": args.steps, "size": args.size, "sections": list(args.sections),
                        "max_noise": args.max_noise, "retries": args.retries, "wait_quiet": args.wait_quiet},
           "sections": {}}
    bench.results = res["sections"]  # a later section may use an earlier one's numbers (limits: peers' times)
    try:
        for name, section in SECTIONS.items():
            if name in args.sections:
                res["sections"][name] = section.measure(bench)
    finally:
        if not args.keep:
            shutil.rmtree(bench.tmp, ignore_errors=True)
        else:
            log(f"outputs kept in {bench.tmp}")
    if bench.model:
        res["model"] = bench.model
        res["model_bytes"] = dir_size(Path(bench.model))
        res["cuda"] = bench.cuda()
        res["device"] = bench.device
    else:
        res["cuda"] = None
        try:
            res["cuda"] = bool(res["machine"].get("gpus")) or None
        except Exception:
            pass
    res["load_avg"] = [load0, os.getloadavg()[0]] if load0 is not None else None
    res["failures"] = bench.failures
    res["waited_quiet_s"] = round(bench.waited_s, 1)
    res["elapsed_s"] = round(time.perf_counter() - t0, 1)
    res["json_path"] = display_path(str(args.json.resolve()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    args.output.write_text(keep_blocks(args.output, report(res)))
    log(f"wrote {args.output} and {args.json} in {res['elapsed_s']:.0f}s")
    if bench.failures:
        log("unexpected exits:\n  " + "\n  ".join(bench.failures))
        return 1
    return 0


def keep_blocks(output: Path, text: str) -> str:
    """The report, followed by the blocks other scripts keep in the same file (demo_quality.py,
    train_concepts.py: ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``), which a rewrite must not drop."""
    import re

    old = output.read_text() if output.exists() else ""
    kept = [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", old, flags=re.S)]
    return text.rstrip("\n") + "".join("\n\n" + b for b in kept) + "\n" if kept else text
