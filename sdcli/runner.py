"""The generation loop shared by every task: plan (all checks, no model), load, batches, outputs.

``plan`` does every check that needs no model, so bad input fails in a fraction of a second;
``run`` then loads the model and the safety checker before the first image is generated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import __version__, outputs, prompts, tasks
from .config import RunConfig
from .errors import Interrupted, SdcliError, UsageError
from .models import Source, resolve_source
from .progress import Reporter


@dataclass
class Plan:
    cfg: RunConfig
    task: tasks.Task
    jobs: list[prompts.Job]
    batches: list[list[prompts.Job]]
    outdir: Path
    source: Source


@dataclass
class Summary:
    outdir: str
    images: list[str] = field(default_factory=list)
    grid: Optional[str] = None
    generated: int = 0
    flagged: int = 0
    unwatermarked: int = 0
    seconds: float = 0.0


def plan(cfg: RunConfig) -> Plan:
    """Everything that can be checked before the model loads: prompts, inputs, outdir, model source."""
    task = tasks.get(cfg.task)
    if task.image_guidance and cfg.prompt is None and cfg.from_file is None:
        raise UsageError("--prompt: instruct-edit needs the edit instruction (--prompt or --edit)")
    rows = task.expand_rows(cfg, prompts.rows_for(cfg, task.row_keys))
    jobs = prompts.make_jobs(cfg, rows)
    batches = prompts.batches(jobs, cfg.n_samples)
    if cfg.output is not None:
        if len(jobs) != 1:
            raise UsageError(f"--output {cfg.output}: writes one image, but this run makes {len(jobs)}; "
                             "use --n_samples 1 --n_iter 1 and one input, or --outdir")
        if Path(cfg.output).suffix.lower() not in outputs.FORMATS:
            raise UsageError(f"--output {cfg.output}: unknown image type; end it in .png, .jpg or .webp")
        outdir = outputs.prepare_outdir(str(Path(cfg.output).parent), need_samples=False)
    else:
        outdir = outputs.prepare_outdir(cfg.outdir or task.outdir, need_samples=not cfg.skip_save)
    source = resolve_source(cfg.model or task.default_model, cfg, cfg.task)
    return Plan(cfg, task, jobs, batches, outdir, source)


class Generator:
    """A loaded pipeline (+ safety checker) that turns batches of jobs into images."""

    def __init__(self, p: Plan, reporter: Reporter):
        from . import models, postprocess

        cfg = p.cfg
        self.plan, self.reporter = p, reporter
        self.device = models.resolve_device(cfg.device)
        self.dtype = models.resolve_dtype(cfg.precision, self.device)
        reporter.info(f"loading {p.source.name} ({p.source.kind}) on {self.device}, {str(self.dtype).replace('torch.', '')}")
        t0 = time.monotonic()
        self.checker = None
        if cfg.safety_checker:  # first: a missing checker stops the run before the (slow) model load
            where = cfg.safety_checker_source or postprocess.checker_location(p.source)
            self.checker = postprocess.load_safety_checker(where, self.device, self.dtype,
                                                           cfg.safety_checker_source is not None)
        self.pipe = models.load_pipeline(p.task.pipeline_class, p.source, self.device, self.dtype, cfg)
        reporter.info(f"loaded in {time.monotonic() - t0:.1f}s")
        self.base_scheduler = self.pipe.scheduler
        self.schedulers: dict[str, Any] = {}
        self.default_w, self.default_h = models.default_size(self.pipe)

    def size(self, job: prompts.Job) -> tuple[int, int]:
        return job.W or self.default_w, job.H or self.default_h

    def scheduler(self, name: str):
        from .models import make_scheduler

        if name == "model":
            return self.base_scheduler
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(name, self.base_scheduler.config)
        return self.schedulers[name]

    def generate(self, batch: list[prompts.Job]) -> tuple[list, list[bool], Any, int]:
        """Images, NSFW flags, the task's depth map (or None) and the denoising steps run, for one batch.
        Flagged images are already replaced by black."""
        import torch

        from .postprocess import black_like

        first = batch[0]
        width, height = self.size(first)
        self.pipe.scheduler = self.scheduler(first.scheduler)

        prepared = self.plan.task.prepare(self.pipe, batch, width, height)
        planned = int(first.steps * prepared.kwargs["strength"]) if "strength" in prepared.kwargs else first.steps
        steps_run = 0

        def on_step(pipe, i, t, kwargs):
            nonlocal steps_run
            steps_run += 1
            self.reporter.step(steps_run, planned)
            return kwargs

        kwargs = dict(
            prompt=[j.prompt for j in batch],
            negative_prompt=[j.negative_prompt for j in batch],
            num_inference_steps=first.steps,
            guidance_scale=first.scale,
            eta=first.eta,
            generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
            output_type="pil",
            callback_on_step_end=on_step,
        )
        kwargs.update(prepared.kwargs)
        with torch.inference_mode():
            images = self.pipe(**kwargs).images
        flags = self.checker.check(images) if self.checker else [False] * len(images)
        return [black_like(im) if f else im for im, f in zip(images, flags)], flags, prepared.depth, steps_run


def record_for(p: Plan, gen: Generator, job: prompts.Job, batch_size: int, steps_run: int, nsfw: bool,
               watermark: Optional[str]) -> dict[str, Any]:
    """The full settings record of one image (PNG ``sdcli`` chunk and manifest line)."""
    cfg = p.cfg
    width, height = gen.size(job)
    return {
        "sdcli_version": __version__,
        "task": p.task.name,
        "job_id": job.job_id(p.source.name, p.task.name),
        "index": job.index,
        "iteration": job.iteration,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": job.steps,
        "denoising_steps": steps_run,
        "scale": job.scale,
        "width": width,
        "height": height,
        "scheduler": job.scheduler,
        "eta": job.eta,
        "batch_size": batch_size,
        "model": p.source.name,
        "model_source": p.source.location if p.source.kind == "hub" else p.source.kind,
        "device": gen.device,
        "precision": str(gen.dtype).replace("torch.", ""),
        "nsfw": nsfw,
        "watermark": watermark,
        **p.task.record(job),
    }


def a1111_for(p: Plan, rec: dict[str, Any], job: prompts.Job) -> str:
    from .config import SCHEDULERS

    sampler = SCHEDULERS[job.scheduler][2] if job.scheduler in SCHEDULERS else "Model default"
    params = {
        "Steps": rec["steps"], "Sampler": sampler, "CFG scale": rec["scale"], "Seed": rec["seed"],
        "Size": f"{rec['width']}x{rec['height']}", "Model": rec["model"],
        "Eta": rec["eta"] if job.scheduler == "ddim" and rec["eta"] else None,
        **p.task.a1111(job),
        "Version": f"sdcli {__version__}",
    }
    return outputs.a1111_parameters(rec["prompt"], rec["negative_prompt"], params)


def run(p: Plan, reporter: Reporter) -> Summary:
    """Load the model, generate every batch, write samples, manifest lines and the grid."""
    from .postprocess import apply_watermark, can_watermark

    cfg = p.cfg
    t0 = time.monotonic()
    summary = Summary(outdir=str(p.outdir))
    gen = Generator(p, reporter)
    payload = cfg.watermark_text.encode("utf-8") if cfg.watermark else None
    warned_small = False
    grid_images = []
    reporter.start(len(p.jobs), len(p.batches))
    try:
        for number, batch in enumerate(p.batches, 1):
            reporter.batch(number, len(p.batches), batch)
            try:
                images, flags, depth, steps_run = gen.generate(batch)
            except KeyboardInterrupt:
                raise
            except SdcliError:
                raise
            except Exception as e:
                first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
                raise SdcliError(f"generation failed in batch {number} (prompt {batch[0].source}): "
                                 f"{type(e).__name__}: {first[:300]}") from e
            records = []
            for job, image, flagged in zip(batch, images, flags):
                marked = payload is not None and can_watermark(*image.size)
                if payload is not None and not marked and not warned_small:
                    reporter.warn(f"images under 256x256 pixels ({image.size[0]}x{image.size[1]}) are saved "
                                  "without the invisible watermark")
                    warned_small = True
                if marked:
                    image = apply_watermark(image, payload)
                summary.unwatermarked += payload is not None and not marked
                rec = record_for(p, gen, job, len(batch), steps_run, flagged, cfg.watermark_text if marked else None)
                path = None
                if cfg.output is not None:
                    data = outputs.encode_image(image, Path(cfg.output).suffix, a1111_for(p, rec, job), rec)
                    written = outputs.write_exact(Path(cfg.output), data)
                elif not cfg.skip_save:
                    data = outputs.encode_png(image, a1111_for(p, rec, job), rec)
                    written = outputs.write_numbered(p.outdir / "samples", data, outputs.SAMPLE_RE, "{:05d}.png")
                if cfg.output is not None or not cfg.skip_save:
                    path = outputs.relpath(written, p.outdir)
                    extra = {}
                    if depth is not None and cfg.save_depth:
                        depth_path = outputs.write_exact(written.with_name(written.stem + "-depth.png"),
                                                         outputs.encode_png(depth, "", {"depth_for": path}))
                        extra["depth_path"] = outputs.relpath(depth_path, p.outdir)
                    records.append({**rec, "path": path, "sha256": outputs.sha256(data), **extra})
                    summary.images.append(str(written))
                summary.generated += 1
                summary.flagged += flagged
                reporter.image(job.index, path, job.seed, flagged)
                if not cfg.skip_grid and cfg.output is None:
                    grid_images.append(image)
            outputs.append_manifest(p.outdir, records)
        if grid_images:
            summary.grid = write_grid(p, grid_images, payload, reporter)
    except KeyboardInterrupt:
        summary.seconds = time.monotonic() - t0
        raise Interrupted(f"interrupted: {summary.generated} of {len(p.jobs)} image(s) written to {p.outdir}") from None
    finally:
        reporter.close()
    summary.seconds = time.monotonic() - t0
    return summary


def write_grid(p: Plan, images: list, payload: Optional[bytes], reporter: Reporter) -> Optional[str]:
    from .postprocess import apply_watermark, can_watermark

    if len({im.size for im in images}) > 1:
        reporter.warn("images of different sizes: no grid written")
        return None
    grid = outputs.make_grid(images, p.cfg.n_rows or p.cfg.n_samples)
    marked = payload is not None and can_watermark(*grid.size)
    if marked:
        grid = apply_watermark(grid, payload)
    rec = {"sdcli_version": __version__, "task": p.task.name, "model": p.source.name, "images": len(images),
           "watermark": p.cfg.watermark_text if marked else None}
    data = outputs.encode_png(grid, "", rec)
    return str(outputs.write_numbered(p.outdir, data, outputs.GRID_RE, "grid-{:04d}.png"))
