"""The run loop's logic (resume, per-batch failures, --fail-fast, interruption, grid, summary) through the
loader seam of ``runner.run``: a fake pipeline that paints each job's seed, so no torch is needed and each
case takes milliseconds. The real pipeline runs the same loop in test_batch.py and test_txt2img.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import manifest, pixels
from PIL import Image

from sdcli import config
from sdcli.guards import Stop
from sdcli.pipeline import BatchResult
from sdcli.plan import plan
from sdcli.progress import Reporter
from sdcli.records import RunFacts


class FakePipeline:
    """Paints every image in a grey level from its seed; fails the batches whose first seed is in ``fail``;
    asks for a stop after ``stop_after`` batches (as SIGTERM would)."""

    def __init__(self, p, fail=(), stop_after=None, stop=None):
        self.facts = RunFacts.of(p.task.name, p.source, "cpu", "float32")
        self.fail, self.stop_after, self.stop = set(fail), stop_after, stop
        self.batches: list[list[int]] = []

    def generate(self, batch, stopped=lambda: False) -> BatchResult:
        self.batches.append([j.seed for j in batch])
        if batch[0].seed in self.fail:
            raise RuntimeError(f"boom at seed {batch[0].seed}\nsecond line")
        if self.stop_after is not None and len(self.batches) >= self.stop_after:
            self.stop()
        w, h = batch[0].W, batch[0].H
        images = [Image.new("RGB", (w, h), (j.seed % 256,) * 3) for j in batch]
        return BatchResult(images, [False] * len(batch), w, h, batch[0].denoising_steps)


def run(outdir, fake_args=None, **flags):
    """One run of 3 batches x 2 images (seeds 10..15) at 64 px on the fake pipeline; (summary, fake)."""
    from sdcli import runner

    cfg = config.load("txt2img", flags={"model": "tiny", "outdir": str(outdir), "n_samples": 2, "n_iter": 3,
                                        "seed": 10, "H": 64, "W": 64, "watermark": False, **flags})
    p = plan(cfg)
    made = []

    def load(plan_, reporter):
        fake = FakePipeline(plan_, **(fake_args or {}))
        made.append(fake)
        return fake

    with Stop() as stop:
        if fake_args and "stop_after" in fake_args:
            fake_args["stop"] = lambda: setattr(stop, "requested", True)
        summary = runner.Run(p, Reporter(quiet=True), stop, load).execute()
    return summary, (made[0] if made else None)


def test_every_job_is_saved_recorded_and_gridded(tmp_path):
    summary, fake = run(tmp_path)
    assert fake.batches == [[10, 11], [12, 13], [14, 15]]
    assert (summary.generated, summary.failed, summary.status) == (6, 0, "ok")
    recs = manifest(tmp_path)
    assert [r["seed"] for r in recs] == [10, 11, 12, 13, 14, 15] and len({r["job_id"] for r in recs}) == 6
    assert all(pixels(tmp_path / r["path"])[0, 0, 0] == r["seed"] for r in recs)
    assert summary.images == [str(tmp_path / r["path"]) for r in recs]
    grid = pixels(summary.grid)
    assert grid[2 + 66 * 2 + 5, 2 + 66 + 5, 0] == 15  # row 3, column 2: the last image


def test_a_failed_batch_is_recorded_and_the_others_run(tmp_path):
    summary, fake = run(tmp_path, {"fail": [12]})
    assert fake.batches == [[10, 11], [12, 13], [14, 15]]
    assert (summary.generated, summary.failed, summary.status) == (4, 2, "failed")
    failed = [r for r in manifest(tmp_path) if r["status"] == "failed"]
    assert [r["seed"] for r in failed] == [12, 13]
    assert failed[0]["error"] == "generation failed in batch 2 (--prompt): RuntimeError: boom at seed 12"


def test_fail_fast_stops_at_the_first_failure(tmp_path):
    summary, fake = run(tmp_path, {"fail": [12]}, fail_fast=True)
    assert fake.batches == [[10, 11], [12, 13]]
    assert (summary.generated, summary.failed) == (2, 2)


def test_a_stop_request_ends_the_run_between_batches_and_resume_finishes_it(tmp_path):
    summary, fake = run(tmp_path, {"stop_after": 2}, resume=True)
    assert summary.interrupted and summary.status == "interrupted" and summary.generated == 4
    assert summary.grid is None  # the grid waits for the whole set
    summary, fake = run(tmp_path, resume=True)
    assert fake.batches == [[14, 15]] and (summary.skipped, summary.generated) == (4, 2)
    assert [r["seed"] for r in manifest(tmp_path)] == [10, 11, 12, 13, 14, 15]
    grid = pixels(summary.grid)  # with the images of the first run, read back from disk
    assert grid[2 + 5, 2 + 5, 0] == 10 and grid[2 + 66 * 2 + 5, 2 + 66 + 5, 0] == 15


def test_resume_of_a_complete_run_loads_nothing(tmp_path):
    run(tmp_path, resume=True)
    summary, fake = run(tmp_path, resume=True)
    assert fake is None and (summary.skipped, summary.generated, summary.status) == (6, 0, "ok")


def test_resume_redoes_a_batch_for_one_missing_image_and_saves_only_that_image(tmp_path):
    run(tmp_path, resume=True)
    (tmp_path / manifest(tmp_path)[3]["path"]).unlink()  # seed 13
    summary, fake = run(tmp_path, resume=True)
    assert fake.batches == [[12, 13]] and summary.generated == 1
    assert manifest(tmp_path)[-1]["seed"] == 13


def test_skip_save_writes_no_samples_but_a_grid(tmp_path):
    summary, _ = run(tmp_path, skip_save=True)
    assert summary.generated == 6 and summary.images == [] and manifest(tmp_path) == []
    assert not list((tmp_path).glob("samples/*.png")) and summary.grid


@pytest.mark.parametrize("flags,expected", [({"skip_grid": True}, None), ({}, "grid-0000.png")])
def test_grid_flag(tmp_path, flags, expected):
    summary, _ = run(tmp_path, **flags)
    assert (summary.grid and summary.grid.rsplit("/", 1)[-1]) == expected


def test_summary_is_json_ready(tmp_path):
    import dataclasses

    summary, _ = run(tmp_path, {"fail": [14]})
    data = json.loads(json.dumps(dataclasses.asdict(summary)))
    assert data["failed"] == 2 and data["failures"][0]["seed"] == 14 and data["timings"]["per_image_s"] >= 0
    assert np.isfinite(data["timings"]["total_s"])
