"""Startup: commands that never need torch, against a bare ``python -c "import typer"`` (target <= 1.5x)."""

from __future__ import annotations

from ..context import Bench
from ..harness import Spec, log
from ..markdown import command_cells, fmt_mib, fmt_x, runs_text, section, verdict
from ..paths import PYTHON, SDCLI

NAME = "startup"


def measure(bench: Bench) -> dict:
    runs = bench.args.startup_runs
    cmds = [
        ("import typer", [PYTHON, "-c", "import typer"], 0),
        ("sdcli --help", [SDCLI, "--help"], 0),
        ("sdcli txt2img --help", [SDCLI, "txt2img", "--help"], 0),
        ("sdcli config show", [SDCLI, "config", "show"], 0),
        ("argument error", [SDCLI, "txt2img", "--H", "65"], 2),
    ]
    specs = [Spec(f"startup:{label}", label, (lambda i, argv=argv: [argv]), bench.show(argv), rc)
             for label, argv, rc in cmds]
    log(f"startup: {len(specs)} commands x {runs} runs, alternated")
    if bench.args.max_noise > 0:
        bench.wait_quiet()
    bench.alternate(specs, runs, guard=False)  # 0.1 s runs: too short for the per-run noise check
    base = specs[0].median()
    rows = []
    for s in specs:
        rows.append({**s.as_json(), "ratio_to_import_typer": round(s.median() / base, 3) if base else None,
                     "target": None if s is specs[0] else 1.5})
    return {"runs": runs, "rows": rows, "baseline": "import typer"}


def render(st: dict) -> list[str]:
    rows = []
    for r in st["rows"]:
        rows.append(command_cells(r) + [
            fmt_x(r["ratio_to_import_typer"]),
            "(baseline)" if r["target"] is None else verdict(r["ratio_to_import_typer"], r["target"]),
            fmt_mib(r["rss_kib"])])
    return section("Startup",
                   f"Commands that never need torch, against a bare `python -c \"import typer\"`; {runs_text(st['runs'])} "
                   "each, alternated. Target: at most 1.5x `import typer`.",
                   ["what", "command", "median s", "min / max s", "ratio to import typer", "<= 1.5x", "peak RSS"], rows)
