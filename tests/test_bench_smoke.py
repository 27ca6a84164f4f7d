"""The benchmark harness on the tiny model, so it cannot rot: benchmarks/bench.py --smoke (startup, overhead).

Runs the harness as a process (as `make bench-smoke` does) and checks the report it writes: the sections,
numeric medians for every command, and that sdcli made the same pixels as the plain diffusers script.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _rows(markdown: str, heading: str) -> list[list[str]]:
    """The data rows of the first table after ``heading``."""
    section = markdown.split(heading, 1)[1]
    rows, started = [], False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.append(cells)
        elif started:
            break
    return rows[2:]  # drop the header and the |---| line


@pytest.mark.slow
def test_bench_smoke_startup_and_overhead(tiny, tmp_path):
    model = tiny("txt2img")
    out = tmp_path / "B.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--only", "startup,overhead",
         "--model", str(model), "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for heading in ("# Benchmarks", "## Machine", "## Versions", "## Startup", "## Overhead"):
        assert heading in text, heading
    assert "## Options" not in text and "## Batch" not in text  # --only

    startup = _rows(text, "## Startup")
    assert [r[0] for r in startup] == ["import typer", "sdcli --help", "sdcli txt2img --help", "sdcli config show",
                                       "argument error"]
    overhead = _rows(text, "## Overhead")
    assert [r[0] for r in overhead] == ["reference (diffusers script)", "sdcli", "sdcli + safety checker",
                                        "sdcli + watermark"]
    for row in startup + overhead:
        assert float(row[2]) > 0, row  # the median, in seconds
        assert re.fullmatch(r"[0-9.]+x", row[4]), row  # a ratio
        assert "exit" not in row[1], row  # every command exited as expected
    assert re.search(r"sdcli / reference \(median\): [0-9.]+x", text)
    assert "Same pixels as the reference: **yes** (identical)" in text

    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw["sections"]) == {"startup", "overhead"}
    assert raw["sections"]["overhead"]["pixels"]["identical"] is True
    assert all(r["median_s"] > 0 for r in raw["sections"]["overhead"]["rows"])
    assert raw["versions"]["torch"] and raw["machine"]["logical_cpus"]


@pytest.mark.slow
def test_bench_smoke_concepts(tiny, tmp_path):
    """The concepts section (issue 10): a LoRA, fused, an embedding, a long weighted prompt, all three."""
    rows = _smoke_section("concepts", tiny, tmp_path, "## Concepts")
    assert [r[0] for r in rows] == ["plain", "one LoRA", "one LoRA, fused", "one embedding", "long weighted prompt",
                                    "all three"]
    for row in rows:
        assert float(row[2]) > 0 and float(row[4]) > 0, row  # sdcli's own load and per-image seconds
        assert "exit" not in row[6], row
    assert "--lora" in rows[1][1] and "--fuse-lora" in rows[2][1] and "--embedding" in rows[3][1]
    assert rows[1][11].startswith("max abs diff") and not rows[1][11].startswith("max abs diff 0 ")


@pytest.mark.slow
def test_bench_smoke_scaleout(tiny, tmp_path):
    """The scale-out section (issue 11): one process, torchrun 2 and 3, two --shard processes together."""
    rows = _smoke_section("scaleout", tiny, tmp_path, "## Scale-out")
    assert [r[0] for r in rows] == ["one process, 2 threads", "one process, 1 thread", "torchrun, 2 processes x 1 thread",
                                    "torchrun, 3 processes x 1 thread", "--shard 1/2 + 2/2 together, 1 thread each"]
    for row in rows[1:]:  # every split run: all 5 images, one grid, the one-thread run's pixels
        assert float(row[2]) > 0 and row[7:] == ["5", "1", "yes"], row


def _smoke_section(name: str, tiny, tmp_path, heading: str) -> list[list[str]]:
    """Run one section of the harness on the tiny model; its table's rows."""
    out = tmp_path / f"{name}.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--only", name,
         "--model", str(tiny("txt2img")), "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _rows(out.read_text(), heading)


@pytest.mark.slow
def test_bench_smoke_peers_duel_and_limits(tiny, tmp_path):
    """The peers section (issue 14) with the entries that need no peer venv, the duel (two entries, several runs
    each), and the physical limit, which counts the model's FLOPs, measures the CPU's peak and turns the peers'
    times into fractions of it."""
    out = tmp_path / "peers.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--only", "peers,duel,limits",
         "--model", str(tiny("txt2img")), "--output", str(out), "--duel-runs", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads(out.with_suffix(".json").read_text())["sections"]
    rows = {r["key"]: r for c in raw["peers"]["cells"] for r in c["rows"]}
    assert {"sdcli", "reference"} <= set(rows)
    for r in rows.values():
        assert r["rc"] == [0] and r["per_image_s"] and r["per_image_s"][0] > 0, r
    assert rows["reference"]["pixels"]["max_abs_diff"] == 0  # the same work as sdcli fp32, pixel for pixel
    # sdcli's defaults keep a tiny UNet on torch in fp32 (auto converts only large ones), and the row says so
    assert rows["sdcli-default"]["detail"]["ran"] == "torch, float32"
    assert rows["sdcli-default"]["pixels"]["max_abs_diff"] == 0
    lim = raw["limits"]
    assert all(f["unet_cfg_step"] > 0 and f["vae_decode"] > 0 for f in lim["flops"].values())
    assert all(lim["peak_gflops"][p]["conv3x3"] > 0 for p in ("fp32", "bf16"))
    assert {e["label"] for e in lim["entries"]} >= {rows["sdcli"]["label"].rsplit(" [", 1)[0]}
    text = out.read_text()
    assert "## Physical limit" in text and "## Fraction of the limit" in text
    duel = raw["duel"]
    assert duel["runs"] == 2 and [r["key"] for r in duel["cells"][0]["rows"]] == duel["pair"]
    assert all(len(r["seconds"]) == 2 and r["rc"] == [0, 0] for r in duel["cells"][0]["rows"])
    line = next(ln for ln in text.splitlines() if ln.startswith("| 64 px, 2 steps, batch 1") and "x**" in ln)
    ratio = duel["cells"][0]["rows"][0]["median_s"] / duel["cells"][0]["rows"][1]["median_s"]
    assert f"**{ratio:.2f}x**" in line
