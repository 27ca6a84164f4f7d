"""Scale-out with the real launchers, as users start them: one prompt file of 5 jobs rendered by 1 process,
by 2 and 3 processes under torchrun (CPU, gloo), by accelerate launch, and by --shard 1/2 + 2/2 running at
the same time: the same job id -> pixels map, no duplicates, one grid equal to the one-process grid. Then a
shard killed mid-run and --resume with another process count, and a rank that fails."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import manifest, run_process, sdcli_command
from test_shards import grid_pixels, pixel_map

pytestmark = pytest.mark.slow

PROMPTS = "a red circle\na blue square\na green star\na yellow triangle\na purple circle\n"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def job_args(tiny, folder: Path, steps: int = 2) -> list[str]:
    prompts = folder / "p.txt"
    prompts.write_text(PROMPTS)
    return ["txt2img", "--model", str(tiny()), "--steps", str(steps), "--H", "64", "--W", "64", "--scheduler", "ddim",
            "--from-file", str(prompts), "--n_iter", "1", "--n_samples", "1", "--seed", "7"]


def torchrun(n: int, *args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
            "-m", "sdcli", *map(str, args)]


def launch(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    r = run_process(*job_args(tiny, folder), "--outdir", folder / "out", env=ENV)
    assert r.returncode == 0, r.stderr
    return folder / "out"


def assert_same_run(out: Path, reference: Path) -> None:
    assert pixel_map(out) == pixel_map(reference) and len(pixel_map(out)) == 5
    assert len(list(out.glob("grid-*"))) == 1 and grid_pixels(out) == grid_pixels(reference)


@pytest.mark.parametrize("n", [2, 3])
def test_torchrun_splits_the_file_and_rank_0_writes_one_grid_and_the_merged_summary(tiny, tmp_path, reference, n):
    r = launch(torchrun(n, *job_args(tiny, tmp_path), "--outdir", tmp_path / "out", "--json"))
    assert r.returncode == 0, r.stderr
    assert_same_run(tmp_path / "out", reference)
    docs = json_lines(r.stdout)
    own = sorted((d for d in docs if not d.get("merged")), key=lambda d: d["shard"])
    (merged,) = [d for d in docs if d.get("merged")]
    assert [d["shard"] for d in own] == [f"{k}/{n}" for k in range(1, n + 1)]
    assert [s["generated"] for s in merged["shards"]] == [d["generated"] for d in own]
    assert merged["generated"] == 5 and merged["status"] == "ok" and merged["grid"]
    assert all(f"sdcli[{k}/{n}]: shard {k}/{n} (torchrun, local rank {k - 1})" in r.stderr for k in range(1, n + 1))


def test_accelerate_launch_splits_the_file_too(tiny, tmp_path, reference):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "sdcli", *job_args(tiny, tmp_path), "--outdir", str(tmp_path / "out")]
    r = launch(cmd)
    assert r.returncode == 0, r.stderr
    assert "(accelerate, local rank 1)" in r.stderr
    assert_same_run(tmp_path / "out", reference)


def test_two_shards_at_the_same_time_make_the_one_process_run(tiny, tmp_path, reference):
    out = tmp_path / "out"
    procs = [subprocess.Popen(sdcli_command(*job_args(tiny, tmp_path), "--outdir", out, "--shard", f"{k}/2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for k in (1, 2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert_same_run(out, reference)
    assert sum("every image of the run is done: grid" in e for e in errs) == 1


def test_a_killed_shard_is_finished_by_resume_with_another_process_count(tiny, tmp_path, tmp_path_factory):
    steps = 12  # slow enough to kill shard 2/2 after its first image
    ref_folder = tmp_path_factory.mktemp("ref12")
    r = run_process(*job_args(tiny, ref_folder, steps), "--outdir", ref_folder / "out", env=ENV)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    args = job_args(tiny, tmp_path, steps)
    first = subprocess.Popen(sdcli_command(*args, "--outdir", out, "--shard", "1/2"), stderr=subprocess.PIPE, text=True, env=ENV)
    second = subprocess.Popen(sdcli_command(*args, "--outdir", out, "--shard", "2/2"), stderr=subprocess.PIPE, text=True, env=ENV)
    t0 = time.monotonic()
    while not any(r.get("seed") in (8, 10) for r in manifest(out) if r.get("status") == "ok"):  # shard 2/2's jobs
        assert second.poll() is None and time.monotonic() - t0 < 120, "shard 2/2 ended before the kill point"
        time.sleep(0.02)
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert first.wait(timeout=300) == 0
    assert len(pixel_map(out)) < 5 and not list(out.glob("grid-*"))
    r = launch(torchrun(3, *args, "--outdir", out, "--resume", "--json"))
    assert r.returncode == 0, r.stderr
    (merged,) = [d for d in json_lines(r.stdout) if d.get("merged")]
    assert merged["generated"] + merged["skipped"] == 5 and merged["generated"] >= 1
    assert_same_run(out, ref_folder / "out")


def test_a_failing_rank_is_named_the_others_keep_their_images_and_resume_finishes(tiny, tmp_path, reference):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".sdcli-resume-2of3.lock", os.O_RDWR | os.O_CREAT)  # another run holds shard 2/3
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = launch(torchrun(3, *job_args(tiny, tmp_path), "--outdir", out, "--resume"))
    finally:
        os.close(fd)
    assert r.returncode != 0
    assert "rank 1 (shard 2/3) failed: --outdir" in r.stderr and "rerun with --resume" in r.stderr
    assert "sdcli[2/3]: error:" in r.stderr
    assert len(pixel_map(out)) == 3 and not list(out.glob("grid-*"))  # shards 1/3 and 3/3: jobs 0, 3 and 2
    r = launch(torchrun(3, *job_args(tiny, tmp_path), "--outdir", out, "--resume"))
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference)
