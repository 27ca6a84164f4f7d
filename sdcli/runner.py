"""The run loop shared by every task, in named phases: recover, select (resume), record bad rows, load,
generate and save each batch, grid. Signals stop it cleanly; it returns a ``Summary`` and never raises
for a failed item, an interrupt or a finished run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import grids, manifest, outputs, records
from .errors import SdcliError, UsageError, first_line
from .guards import Stop, resume_lock
from .pipeline import StopRequested
from .plan import Plan
from .progress import Reporter
from .prompts import Job
from .summary import Summary



def load_pipeline(p: Plan, reporter: Reporter):
    """The default loader: the real pipeline (tests pass a fake one with the same ``generate``)."""
    from .pipeline import LoadedPipeline

    return LoadedPipeline(p, reporter)


def run(p: Plan, reporter: Reporter, load: Callable = load_pipeline) -> Summary:
    """Load the model, generate every batch not already done (of this process's shard), write samples +
    manifest lines and the grid. Under a launcher, the ranks then meet: rank 0 writes the grid and merges."""
    from .dist import Group, finish_group

    group = Group.of(p.shard)
    try:
        with Stop() as stop, resume_lock(p.outdir, p.cfg.resume, p.shard.lock_name):
            summary = Run(p, reporter, stop, load).execute()
    except SdcliError as e:
        if group is None:
            raise
        failed = e.summary or Summary(task=p.task.name, outdir=str(p.outdir), shard=p.shard.fraction)
        group.gather({**failed.as_json(), "status": "failed", "exit_code": e.exit_code, "error": first_line(e)})
        raise
    if group is not None:
        finish_group(p, reporter, group, summary)
    return summary


class Run:
    def __init__(self, p: Plan, reporter: Reporter, stop: Stop, load: Callable):
        self.p, self.cfg, self.reporter, self.stop, self.load = p, p.cfg, reporter, stop, load
        self.summary = Summary(task=p.task.name, outdir=str(p.outdir), total=len(p.jobs))
        if p.shard.sharded:
            self.summary.total = sum(map(len, p.share)) + len(self.own_bad_rows())
            self.summary.shard = p.shard.fraction
        self.done: dict[str, dict[str, Any]] = {}
        self.watermark = self.cfg.watermark_text if self.cfg.watermark else None  # the payload
        # instruct-edit --output writes one file where the user said, and a manifest beside it only if asked
        self.writes_manifest = self.cfg.output is None or self.cfg.manifest
        self.warned_small = False
        self.grid_images: dict[int, Any] = {}
        self.grid_records: dict[int, dict[str, Any]] = {}  # the grid's parameters are its first image's
        suffix = Path(self.cfg.output).suffix if self.cfg.output else outputs.suffix_of(self.cfg.format)
        if self.watermark is not None and outputs.loses_watermark(suffix, self.cfg.quality):
            reporter.warn("lossy WebP erases the invisible watermark; use --quality 100 (lossless WebP), jpg or png")

    def execute(self) -> Summary:
        t0 = time.monotonic()
        s = self.summary
        self.recover()
        todo = self.select()
        self.record_bad_rows()
        spec = grids.spec_for(self.p) if self.p.shard.sharded else None
        if spec is not None:
            grids.record_run(self.p.outdir, spec)  # for `sdcli grid OUTDIR`
        if not todo:
            if self.grid_missing():  # a killed or full-disk run recorded every image but not its grid
                self.reporter.info("every image is done; writing the grid the earlier run did not")
                s.grid = self.write_grid(records.RunFacts.of(self.p.task.name, self.p.source))
            else:
                self.reporter.info("nothing to generate" + (f" in {self.p.shard.label}" if spec else ""))
                self.finish_shard(spec)
            s.timings["total_s"] = round(time.monotonic() - t0, 3)
            return s
        want_grid = self.wants_grid()
        gen = self.load(self.p, self.reporter)
        s.timings["load_s"] = round(time.monotonic() - t0, 3)
        self.reporter.start(sum(len(b) for b in todo), len(todo), len(self.p.jobs))
        t_gen = time.monotonic()
        try:
            self.generate(gen, todo, want_grid and spec is None)
            if self.grid_images and not self.stop.requested:
                s.grid = self.write_grid(gen.facts)
            elif not self.stop.requested:
                self.finish_shard(spec)
        except (StopRequested, KeyboardInterrupt):
            s.interrupted = True
        except OSError as e:
            message = outputs.disk_error(e, self.p.outdir)
            if message is None:
                raise
            error = SdcliError(message)
            error.summary = s  # --json still reports what was written
            raise error from None
        finally:
            self.reporter.close()
            s.timings["generate_s"] = round(time.monotonic() - t_gen, 3)
            s.timings["total_s"] = round(time.monotonic() - t0, 3)
            if s.generated:
                s.timings["per_image_s"] = round(s.timings["generate_s"] / s.generated, 3)
        s.interrupted = s.interrupted or self.stop.requested
        return s

    # --- phases before the model loads ---------------------------------------------------------------

    def recover(self) -> None:
        """Record complete samples of an earlier killed run (and clear its stale temporary files)."""
        if self.cfg.output is None:
            self.summary.recovered = manifest.recover(self.p.outdir)
        if self.summary.recovered:
            self.reporter.warn(f"recorded {self.summary.recovered} complete image(s) of an earlier killed run in the manifest")

    def select(self) -> list[list[Job]]:
        """The batches still to make (--resume skips jobs already complete in the outdir)."""
        damaged: list[int] = []
        self.done = manifest.completed(self.p.outdir, damaged) if self.cfg.resume else {}
        if damaged:
            lines = ", ".join(map(str, damaged[:10])) + (" ..." if len(damaged) > 10 else "")
            self.reporter.warn(f"{manifest.MANIFEST}: skipped {len(damaged)} damaged line(s) (line {lines}); "
                               "the images they recorded are made again")
        share = self.p.share
        self.summary.skipped = sum(1 for b in share for j in b if j.id in self.done)
        if self.summary.skipped:
            self.reporter.info(f"resume: {self.summary.skipped} of {sum(map(len, share))} image(s) already complete in "
                               f"{self.p.outdir}")
        return [b for b in share if any(j.id not in self.done for j in b)]

    def own_bad_rows(self) -> list[Job]:
        """The jobs of rows that failed their checks: recorded by one process (the first shard)."""
        return [j for j in self.p.jobs if j.error is not None] if self.p.shard.index == 0 else []

    def record_bad_rows(self) -> None:
        """Prompt-file rows whose inputs failed their checks: recorded as failed, the others run."""
        facts = records.RunFacts.of(self.p.task.name, self.p.source)
        for job in self.own_bad_rows():
            if job.id not in self.done:
                self.reporter.warn(f"{job.error} (skipping this row)")
                self.summary.failures.append(records.failure_record(facts, job, job.error))
        if self.writes_manifest:
            manifest.record_failures(self.p.outdir, self.summary.failures)
        self.summary.failed = len(self.summary.failures)

    def wants_grid(self, quiet: bool = False) -> bool:
        if self.cfg.skip_grid or self.cfg.output is not None or self.p.named_after_inputs:
            return False
        if len(self.p.jobs) > grids.GRID_MAX_IMAGES:
            if quiet:
                return False
            self.reporter.warn(f"no grid for a run of {len(self.p.jobs)} images (at most {grids.GRID_MAX_IMAGES}); "
                               "the samples are all saved")
            return False
        return True

    # --- with the model ------------------------------------------------------------------------------

    def generate(self, gen, todo: list[list[Job]], want_grid: bool) -> None:
        for number, batch in enumerate(todo, 1):
            if self.stop.requested:
                raise StopRequested
            self.reporter.batch(number, len(todo), batch)
            try:
                result = gen.generate(batch, lambda: self.stop.requested)
            except (StopRequested, KeyboardInterrupt):
                raise
            except Exception as e:
                if isinstance(e, SdcliError) and not isinstance(e, UsageError):
                    raise
                self.batch_failed(gen.facts, number, batch, e)
                if self.cfg.fail_fast:
                    break
                continue
            for job, image, flagged in zip(batch, result.images, result.nsfw):
                if job.id in self.done:
                    continue  # --resume regenerated the whole batch (identical pixels) for its missing images
                image, mark = self.watermarked(image)
                self.summary.unwatermarked += self.watermark is not None and mark is None
                rec = records.image_record(gen.facts, job, result, flagged, mark)
                written = self.save(rec, job, image, result)
                if written is not None:
                    self.summary.images.append(str(written))
                path = outputs.relpath(written, self.p.outdir) if written is not None else ""
                self.summary.generated += 1
                self.summary.flagged += flagged
                self.reporter.image(job.index, path, job.seed, flagged)
                if want_grid:
                    self.grid_images[job.index] = image
                    self.grid_records[job.index] = rec

    def batch_failed(self, facts: records.RunFacts, number: int, batch: list[Job], e: Exception) -> None:
        message = f"generation failed in batch {number} ({batch[0].source}): {type(e).__name__}: {first_line(e)}"
        failures = [records.failure_record(facts, j, message) for j in batch if j.id not in self.done]
        if self.writes_manifest:
            manifest.record_failures(self.p.outdir, failures)
        self.summary.failures += failures
        self.summary.failed += len(failures)
        self.reporter.warn(message)

    def watermarked(self, image) -> tuple[Any, Optional[str]]:
        """The image with the watermark (and the payload), or unchanged (and None) when off or too small."""
        from .postprocess import apply_watermark, can_watermark

        if self.watermark is None:
            return image, None
        if not can_watermark(*image.size):
            if not self.warned_small:
                self.reporter.warn(f"images under 256x256 pixels ({image.size[0]}x{image.size[1]}) are saved "
                                   "without the invisible watermark")
                self.warned_small = True
            return image, None
        return apply_watermark(image, self.watermark.encode("utf-8")), self.watermark

    def save(self, rec: dict[str, Any], job: Job, image, result) -> Optional[Path]:
        """Write one image (numbered sample, or --output / --indir's OUTDIR/x.png: ``Plan.exact_path``) with its
        record and manifest line; returns where (None with --skip-save)."""
        parameters = records.a1111_for(rec, job)
        outdir = self.p.outdir
        exact = self.p.exact_path(job)
        if exact is not None:
            data = outputs.encode_image(image, exact.suffix, parameters, rec, self.cfg.quality)
            written = outputs.write_exact(exact, data)
            if self.writes_manifest:
                line = records.manifest_line(rec, outputs.relpath(written, outdir), outputs.sha256(data))
                manifest.append_manifest(outdir, [line])
        elif self.cfg.skip_save:
            return None
        else:
            depth = result.depth if self.cfg.save_depth else None

            def save_depth(target: Path) -> dict[str, Any]:
                if depth is None:
                    return {}
                png = outputs.encode_png(depth, "", {"depth_for": outputs.relpath(target, outdir)})
                path = outputs.write_exact(target.with_name(target.stem + "-depth.png"), png)
                return {"depth_path": outputs.relpath(path, outdir)}

            suffix = outputs.suffix_of(self.cfg.format)
            data = outputs.encode_image(image, suffix, parameters, rec, self.cfg.quality)
            written, _ = manifest.save_sample(outdir, data, rec, save_depth, suffix)
        return written

    # --- the grid ------------------------------------------------------------------------------------

    def finish_shard(self, spec: Optional[grids.GridSpec]) -> None:
        """A shard without a launcher to meet: the last to finish writes the run's grid."""
        if spec is not None and not self.p.shard.rendezvous:
            self.summary.grid = grids.report(self.reporter, self.p.outdir, spec)

    def write_grid(self, facts: records.RunFacts) -> Optional[str]:
        spec = grids.spec_for(self.p)
        first = {**facts.base(), "model": facts.model, "model_sha256": facts.model_sha256}
        path = grids.encode(self.p.outdir, spec, self.all_images(), first, self.grid_parameters())
        if path is None:
            self.reporter.warn("images of different sizes: no grid written")
        return path

    def grid_missing(self) -> bool:
        """--resume with every job done: is the grid the run promised missing from the outdir?"""
        if self.p.shard.sharded or not self.cfg.resume or not self.done or not self.wants_grid(quiet=True):
            return False
        return grids.existing(self.p.outdir, grids.spec_for(self.p).key) is None

    def grid_parameters(self) -> str:
        """The A1111 ``parameters`` of the grid: its first image's (as A1111's grids)."""
        for job in self.p.jobs:
            rec = self.grid_records.get(job.index) or self.done.get(job.id)
            if rec is not None:
                return records.a1111_for(rec, job)
        return ""

    def all_images(self) -> list:
        """Every image of the job set in order: this run's, and (with --resume) those already on disk."""
        from PIL import Image

        out = []
        for job in self.p.jobs:
            if job.index in self.grid_images:
                out.append(self.grid_images[job.index])
            elif job.id in self.done:
                with Image.open(self.p.outdir / self.done[job.id]["path"]) as im:
                    out.append(im.convert("RGB"))
        return out

