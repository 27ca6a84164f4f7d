"""Scale-out, the parts one process shows: which share a process takes (--shard, the job-array variables, the
launchers' ranks), that the shares make up the one-process run exactly, the per-shard resume lock, grids
written by the last shard and by `sdcli grid`. Real launchers (torchrun, accelerate) are in
test_scaleout.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os

import pytest
from helpers import FAST, manifest

from sdcli import dist, shards
from sdcli.errors import UsageError
from sdcli.outputs import read_metadata

PROMPTS = "a red circle\na blue square\na green star\na yellow triangle\na purple circle\n"


# --- which share ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,index,count", [("1/2", 0, 2), (" 2 / 3 ", 1, 3), ("1/1", 0, 1), ("7/7", 6, 7)])
def test_shard_k_of_n_is_one_based(text, index, count):
    s = shards.parse(text, {})
    assert (s.index, s.count, s.source, s.fraction) == (index, count, "--shard", f"{index + 1}/{count}")


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1-2", "2", "auto/0", "-1/2"])
def test_bad_shards_are_refused(text):
    with pytest.raises(UsageError, match="--shard"):
        shards.parse(text, {})


def test_shard_auto_reads_a_slurm_array_counted_from_its_first_task():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
    s = shards.parse("auto", env)
    assert (s.index, s.count, s.source) == (2, 4, "SLURM_ARRAY_TASK_ID")
    assert shards.parse("auto", {**env, "SLURM_ARRAY_TASK_ID": "1"}).index == 0
    stepped = {"SLURM_ARRAY_TASK_ID": "20", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "10",
               "SLURM_ARRAY_TASK_COUNT": "3"}
    assert shards.parse("auto", stepped).index == 2


def test_shard_auto_reads_a_kubernetes_indexed_job_whose_count_the_user_gives():
    s = shards.parse("auto/4", {"JOB_COMPLETION_INDEX": "3"})
    assert (s.index, s.count, s.source) == (3, 4, "JOB_COMPLETION_INDEX")
    with pytest.raises(UsageError, match="auto/N"):
        shards.parse("auto", {"JOB_COMPLETION_INDEX": "0"})
    with pytest.raises(UsageError, match="outside"):
        shards.parse("auto/4", {"JOB_COMPLETION_INDEX": "4"})


def test_shard_auto_without_either_variable_says_what_it_looked_for():
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID.*JOB_COMPLETION_INDEX"):
        shards.parse("auto", {"SLURM_NTASKS": "4"})


def test_launcher_ranks_torchrun_accelerate_mpirun_srun():
    torchrun = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    s = shards.detect(None, torchrun)
    assert (s.index, s.count, s.local_rank, s.source, s.rendezvous) == (1, 3, 1, "torchrun", True)
    assert shards.detect(None, {**torchrun, "ACCELERATE_MIXED_PRECISION": "no"}).source == "accelerate"
    s = shards.detect(None, {"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"})
    assert (s.index, s.count, s.local_rank, s.source, s.rendezvous) == (2, 4, 0, "mpirun", False)
    s = shards.detect(None, {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"})
    assert (s.index, s.count, s.local_rank, s.source) == (5, 8, 1, "srun")


def test_a_batch_script_and_a_world_of_one_are_not_split():
    assert not shards.detect(None, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).sharded  # sbatch's own shell
    assert not shards.detect(None, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}).sharded
    assert not shards.detect(None, {}).sharded


def test_shard_under_a_launcher_splits_further():
    s = shards.detect("2/3", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (s.index, s.count, s.local_rank) == (3, 6, 1)


@pytest.mark.parametrize("batches", [1, 3, 5, 8])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_the_shares_cover_every_batch_once_in_order(batches, count):
    items = list(range(batches))
    shares = [shards.Shard(k, count).share(items) for k in range(count)]
    assert sorted(x for share in shares for x in share) == items
    assert all(share == sorted(share) for share in shares)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_merge_sums_counts_and_keeps_each_rank():
    items = [{"shard": "1/2", "status": "ok", "exit_code": 0, "total": 3, "generated": 3, "images": ["a"]},
             {"shard": "2/2", "status": "failed", "exit_code": 4, "total": 2, "generated": 0, "error": "busy"}]
    merged = dist.merge(items)
    assert merged["merged"] and merged["status"] == "failed" and merged["total"] == 5 and merged["generated"] == 3
    assert [s["shard"] for s in merged["shards"]] == ["1/2", "2/2"] and merged["shards"][1]["error"] == "busy"


def test_each_rank_gets_its_own_gpu(monkeypatch):
    import torch

    from sdcli import config, models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(models, "resolve_precision", lambda precision, device: "fp32")
    monkeypatch.setattr(models, "check_options", lambda cfg, device: None)
    cfg = config.load("txt2img", None, None, {})
    assert [models.resolve_runtime(cfg, r).device for r in (0, 1, 3)] == ["cuda:0", "cuda:1", "cuda:1"]
    assert models.resolve_runtime(cfg).device == "cuda"


# --- through the CLI -------------------------------------------------------------------------------------

def args(tiny, tmp_path, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    return ("txt2img", "--model", tiny(), *FAST, "--from-file", prompts, "--n_iter", 1, "--n_samples", 2,
            "--seed", 11, *extra)


def pixel_map(outdir) -> dict[str, str]:
    """job id -> sha256 of the pixels, asserting every job is recorded once."""
    from PIL import Image

    out = {}
    for r in manifest(outdir):
        if r["status"] == "ok":
            assert r["job_id"] not in out, f"job {r['job_id']} recorded twice"
            with Image.open(outdir / r["path"]) as im:
                out[r["job_id"]] = hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()
    return out


def grid_pixels(outdir) -> list[str]:
    from PIL import Image

    return [hashlib.sha256(Image.open(p).convert("RGB").tobytes()).hexdigest() for p in sorted(outdir.glob("grid-*"))]


@pytest.fixture
def one_process(sdcli, tiny, tmp_path):
    out = tmp_path / "one"
    r = sdcli(*args(tiny, tmp_path, "--outdir", out))
    assert r.code == 0, r.err
    return out


def test_dry_run_lists_only_the_shards_jobs_and_the_shards_make_up_the_run(sdcli, tiny, tmp_path):
    def jobs(*extra):
        r = sdcli(*args(tiny, tmp_path, "--outdir", tmp_path / "o", "--dry-run", *extra))
        assert r.code == 0, r.err
        return [json.loads(line) for line in r.out.splitlines()]

    everything = jobs()
    for n in (2, 3, 7):  # 5 jobs in 3 batches of 2, 2, 1: 7 shards leave four with nothing
        parts = [jobs("--shard", f"{k}/{n}") for k in range(1, n + 1)]
        assert sorted((j["index"] for part in parts for j in part)) == [j["index"] for j in everything]
        assert sum(1 for part in parts if not part) == max(0, n - 3)


def test_shards_run_one_after_another_make_the_one_process_run(sdcli, tiny, tmp_path, one_process):
    out = tmp_path / "split"
    for k in (3, 1, 2):  # any order; the last to finish writes the grid
        r = sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", f"{k}/3", "--json"))
        assert r.code == 0, r.err
        assert f"sdcli[{k}/3]" in r.err and json.loads(r.out)["shard"] == f"{k}/3"
        assert bool(list(out.glob("grid-*"))) == (k == 2)
    assert "every image of the run is done: grid" in r.err
    assert pixel_map(out) == pixel_map(one_process) and len(pixel_map(out)) == 5
    assert grid_pixels(out) == grid_pixels(one_process)
    r = sdcli("grid", out)
    assert r.code == 0 and "already has" in r.out and len(list(out.glob("grid-*"))) == 1


def test_sdcli_grid_writes_the_grid_once_every_shard_is_done(sdcli, tiny, tmp_path, one_process):
    out = tmp_path / "split"
    assert sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", "1/2")).code == 0
    r = sdcli("grid", out)
    assert r.code == 1 and "2 image(s) not done" in r.out and not list(out.glob("grid-*"))
    assert sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", "2/2")).code == 0
    (grid,) = out.glob("grid-*")
    grid.unlink()  # as if the last shard had been killed before its grid
    r = sdcli("grid", out)
    assert r.code == 0 and "wrote" in r.out, r.out
    assert grid_pixels(out) == grid_pixels(one_process)
    def meta(folder):
        return json.loads(read_metadata(str(next(folder.glob("grid-*"))))["sdcli"])

    assert meta(out) == meta(one_process) and meta(out)["images"] == 5


def test_sdcli_grid_errors(sdcli, tmp_path, one_process):
    assert sdcli("grid", tmp_path / "nope").one_error(2, "no such folder")
    assert sdcli("grid", one_process).one_error(2, "records no split run")


def test_resume_with_another_shard_count_finishes_the_set_exactly_once(sdcli, tiny, tmp_path, one_process):
    out = tmp_path / "split"
    assert sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", "2/2")).code == 0  # 1/2 never ran
    generated = 0
    for k in (1, 2, 3):
        r = sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", f"{k}/3", "--resume", "--json"))
        assert r.code == 0, r.err
        generated += json.loads(r.out)["generated"]
    assert generated == 3  # 2/2 had made 2 of the 5
    assert pixel_map(out) == pixel_map(one_process) and grid_pixels(out) == grid_pixels(one_process)


def test_the_resume_lock_is_per_shard(sdcli, tiny, tmp_path):
    out = tmp_path / "split"
    out.mkdir()
    fd = os.open(out / ".sdcli-resume-2of2.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242")
        assert sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", "1/2", "--resume")).code == 0
        r = sdcli(*args(tiny, tmp_path, "--outdir", out, "--shard", "2/2", "--resume"))
        assert r.one_error(4, "pid 4242", "as this shard") and "sdcli[2/2]: error:" in r.err
    finally:
        os.close(fd)


def test_a_bad_row_is_recorded_by_one_shard_only(sdcli, tiny, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"p{i}", "image": str(tmp_path / n)}) + "\n"
                            for i, n in enumerate(["a.png", "b.png", "a.png"])))
    out = tmp_path / "split"
    codes = [sdcli("img2img", "--model", tiny("img2img"), "--steps", 2, "--from-file", rows, "--n_iter", 1,
                   "--n_samples", 1, "--seed", 1, "--outdir", out, "--shard", f"{k}/2").code for k in (1, 2)]
    assert codes == [1, 0]
    assert sorted(r["status"] for r in manifest(out) if "job_id" in r) == ["failed", "ok", "ok"]


def test_random_seed_and_bad_shard_flags_fail_before_loading(sdcli, tiny, tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), "red").save(image)
    r = sdcli("instruct-edit", "--model", tiny("instruct-edit"), "--image", image, "--prompt", "make it blue",
              "--outdir", tmp_path / "o", "--shard", "1/2")
    assert r.one_error(2, "shard 1/2", "own random seed", "--seed") and r.loads == 0
    assert sdcli(*args(tiny, tmp_path, "--shard", "3/2")).one_error(2, "--shard 3/2")
    assert sdcli(*args(tiny, tmp_path, "--shard", "one/two")).one_error(2, "--shard one/two", "K/N")
    r = sdcli(*args(tiny, tmp_path, "--shard", "auto", "--outdir", tmp_path / "o"))
    assert r.one_error(2, "SLURM_ARRAY_TASK_ID") and r.loads == 0


def test_more_shards_than_jobs_the_idle_shard_says_so_and_the_last_writes_the_grid(sdcli, tiny, tmp_path):
    out = tmp_path / "split"
    one = ("txt2img", "--model", tiny(), *FAST, "--prompt", "a kettle", "--n_samples", 1, "--n_iter", 1, "--seed", 1,
           "--outdir", out, "--json")
    r = sdcli(*one, "--shard", "2/2")
    assert r.code == 0 and "nothing to generate in shard 2/2" in r.err and r.loads == 0
    assert json.loads(r.out)["total"] == 0 and not list(out.glob("grid-*"))
    r = sdcli(*one, "--shard", "1/2")
    assert r.code == 0 and json.loads(r.out)["generated"] == 1 and len(list(out.glob("grid-*"))) == 1
