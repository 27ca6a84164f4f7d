"""The run loop shared by every task, in named phases: recover, select (resume), record bad rows, load,
generate and save each batch, grid. Signals stop it cleanly; it returns a ``Summary`` and never raises
for a failed item, an interrupt or a finished run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import manifest, outputs, records
from .errors import SdcliError, UsageError, first_line
from .guards import Stop, resume_lock
from .pipeline import StopRequested
from .plan import Plan
from .progress import Reporter
from .prompts import Job

GRID_MAX_IMAGES = 256  # a grid holds every image of the run in memory


@dataclass
class Summary:
    """What a run did; the CLI prints it (and with --json, this as JSON) and picks the exit code."""

    task: str
    outdir: str
    total: int = 0
    generated: int = 0
    skipped: int = 0  # --resume: already complete
    failed: int = 0
    flagged: int = 0
    unwatermarked: int = 0
    recovered: int = 0  # samples of a killed run recorded in the manifest
    images: list[str] = field(default_factory=list)
    grid: Optional[str] = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "interrupted" if self.interrupted else "failed" if self.failed else "ok"

    def describe(self) -> str:
        """The closing line: what was done, where."""
        counts = [(self.skipped, "already done"), (self.failed, "failed"), (self.flagged, "flagged by the safety checker")]
        parts = [f"{self.generated} generated", *(f"{n} {label}" for n, label in counts if n)]
        return (f"{'interrupted' if self.interrupted else 'done'}: {', '.join(parts)} of {self.total} in "
                f"{self.timings.get('total_s', 0):.1f}s; outputs in {self.outdir}" + (f", grid {self.grid}" if self.grid else ""))


def load_pipeline(p: Plan, reporter: Reporter):
    """The default loader: the real pipeline (tests pass a fake one with the same ``generate``)."""
    from .pipeline import LoadedPipeline

    return LoadedPipeline(p, reporter)


def run(p: Plan, reporter: Reporter, load: Callable = load_pipeline) -> Summary:
    """Load the model, generate every batch not already done, write samples + manifest lines and the grid."""
    with Stop() as stop, resume_lock(p.outdir, p.cfg.resume):
        return Run(p, reporter, stop, load).execute()


class Run:
    def __init__(self, p: Plan, reporter: Reporter, stop: Stop, load: Callable):
        self.p, self.cfg, self.reporter, self.stop, self.load = p, p.cfg, reporter, stop, load
        self.summary = Summary(task=p.task.name, outdir=str(p.outdir), total=len(p.jobs))
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
        if not todo:
            if self.grid_missing():  # a killed or full-disk run recorded every image but not its grid
                self.reporter.info("every image is done; writing the grid the earlier run did not")
                s.grid = self.write_grid(records.RunFacts.of(self.p.task.name, self.p.source))
            else:
                self.reporter.info("nothing to generate")
            s.timings["total_s"] = round(time.monotonic() - t0, 3)
            return s
        want_grid = self.wants_grid()
        gen = self.load(self.p, self.reporter)
        s.timings["load_s"] = round(time.monotonic() - t0, 3)
        self.reporter.start(sum(len(b) for b in todo), len(todo))
        t_gen = time.monotonic()
        try:
            self.generate(gen, todo, want_grid)
            if self.grid_images and not self.stop.requested:
                s.grid = self.write_grid(gen.facts)
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
        self.summary.skipped = sum(1 for j in self.p.jobs if j.id in self.done)
        if self.summary.skipped:
            self.reporter.info(f"resume: {self.summary.skipped} of {len(self.p.jobs)} image(s) already complete in {self.p.outdir}")
        return [b for b in self.p.batches if any(j.id not in self.done for j in b)]

    def record_bad_rows(self) -> None:
        """Prompt-file rows whose inputs failed their checks: recorded as failed, the others run."""
        facts = records.RunFacts.of(self.p.task.name, self.p.source)
        for job in self.p.jobs:
            if job.error is not None and job.id not in self.done:
                self.reporter.warn(f"{job.error} (skipping this row)")
                self.summary.failures.append(records.failure_record(facts, job, job.error))
        if self.writes_manifest:
            manifest.record_failures(self.p.outdir, self.summary.failures)
        self.summary.failed = len(self.summary.failures)

    def wants_grid(self, quiet: bool = False) -> bool:
        if self.cfg.skip_grid or self.cfg.output is not None or self.p.named_after_inputs:
            return False
        if len(self.p.jobs) > GRID_MAX_IMAGES:
            if quiet:
                return False
            self.reporter.warn(f"no grid for a run of {len(self.p.jobs)} images (at most {GRID_MAX_IMAGES}); "
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

    def watermarked(self, image, warn: bool = True) -> tuple[Any, Optional[str]]:
        """The image with the watermark (and the payload), or unchanged (and None) when off or too small."""
        from .postprocess import apply_watermark, can_watermark

        if self.watermark is None:
            return image, None
        if not can_watermark(*image.size):
            if warn and not self.warned_small:
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

    def write_grid(self, facts: records.RunFacts) -> Optional[str]:
        images = self.all_images()
        if len({im.size for im in images}) > 1:
            self.reporter.warn("images of different sizes: no grid written")
            return None
        grid = outputs.make_grid(images, self.cfg.n_rows or self.cfg.n_samples)
        grid, mark = self.watermarked(grid, warn=False)
        suffix = outputs.suffix_of(self.cfg.format)
        record = {**records.grid_record(facts, len(images), mark), "grid_of": self.grid_key()}
        data = outputs.encode_image(grid, suffix, self.grid_parameters(), record, self.cfg.quality)
        return str(outputs.write_numbered(self.p.outdir, data, outputs.GRID_RE, "grid-{:04d}" + suffix))

    def grid_key(self) -> str:
        """Which job set a grid shows (recorded in the grid, so --resume knows whether it is written)."""
        import hashlib

        return hashlib.sha256(" ".join(sorted(j.id for j in self.p.jobs)).encode()).hexdigest()[:16]

    def grid_missing(self) -> bool:
        """--resume with every job done: is the grid the run promised missing from the outdir?"""
        if not self.cfg.resume or not self.done or not self.wants_grid(quiet=True):
            return False
        key = self.grid_key()
        for name in os.listdir(self.p.outdir):
            if outputs.GRID_RE.match(name):
                try:
                    record = json.loads(outputs.read_metadata(str(self.p.outdir / name)).get("sdcli", "{}"))
                except (SdcliError, ValueError):
                    continue
                if isinstance(record, dict) and record.get("grid_of") == key:
                    return False
        return True

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

