"""Markdown formatting shared by the sections' reports: numbers, cells, tables, a section's heading."""

from __future__ import annotations

import statistics
from typing import Optional

NOISE_NOTE = ("`CPU s`: the child's user+system CPU time (median); `others' CPU s`: CPU seconds the rest of the "
              "machine used while it ran (median / max; near 0 = a quiet machine).")


def fmt_s(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def fmt_range(xs: list[float]) -> str:
    return f"{fmt_s(min(xs))} / {fmt_s(max(xs))}" if xs else "n/a"


def fmt_mib(kib) -> str:
    if not kib:
        return "n/a"
    if isinstance(kib, list):
        kib = statistics.median(kib)
    return f"{kib / 1024:,.0f} MiB"


def fmt_gib(b: Optional[int]) -> str:
    return f"{b / 2**30:.2f} GiB" if b else "n/a"


def fmt_x(r: Optional[float]) -> str:
    return f"{r:.3f}x" if r is not None else "n/a"


def verdict(value: Optional[float], target: float) -> str:
    if value is None:
        return "n/a"
    return "yes" if value <= target else "**no**"


def fmt_pixels(p: Optional[dict]) -> str:
    if not p:
        return "n/a"
    if p.get("identical") is None:
        return f"n/a ({p.get('note')})"
    return "identical" if p["identical"] else f"max abs diff {p['max_abs_diff']} (mean {p.get('mean_abs_diff')})"


def fmt_cpu(row: dict) -> str:
    xs = row.get("cpu_s") or []
    return fmt_s(statistics.median(xs)) if xs else "n/a"


def fmt_noise(row: dict) -> str:
    xs = [x for x in row.get("other_cpu_s") or [] if x is not None]
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "n/a"


def runs_text(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def cell(row: dict) -> str:
    rc = row.get("rc") or []
    bad = [c for c in rc if c != row.get("expect_rc", 0)]
    return "" if not bad else f" (**exit {bad[0]}**)"


def code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def command_cell(row: dict) -> str:
    """The command of a measured row, with its first unexpected exit code."""
    return code(row["command"]) + cell(row)


def command_cells(row: dict) -> list[str]:
    """A measured row's first cells: what, the command, median s, min / max s."""
    return [row["label"], command_cell(row), fmt_s(row["median_s"]), fmt_range(row["seconds"])]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return lines


def section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A section of the report: its heading, one paragraph, its table and a blank line."""
    return [f"## {title}", "", intro, ""] + table(header, rows) + [""]
