"""The generation loop shared by every task: plan (all checks, no model), load, batches, outputs.

``plan`` does every check that needs no model, so bad input fails in a fraction of a second;
``run`` then loads the model and the safety checker before the first image is generated.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import __version__, outputs, prompts, tasks
from .config import RunConfig
from .errors import OutdirBusy, SdcliError, UsageError
from .models import Source, resolve_source
from .progress import Reporter


GRID_MAX_IMAGES = 256  # a grid holds every image of the run in memory


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
        models.quiet_libraries()
        self.device = models.resolve_device(cfg.device)
        self.dtype = models.resolve_dtype(cfg.precision, self.device)
        models.check_options(cfg, self.device)
        reporter.info(f"loading {p.source.name} ({p.source.kind}) on {self.device}, {str(self.dtype).replace('torch.', '')}")
        t0 = time.monotonic()
        self.checker = None
        if cfg.safety_checker:  # first: a missing checker stops the run before the (slow) model load
            where = cfg.safety_checker_source or postprocess.checker_location(p.source)
            self.checker = postprocess.load_safety_checker(where, self.device, self.dtype,
                                                           cfg.safety_checker_source is not None)
        self.pipe = models.load_pipeline(p.task.pipeline_class, p.source, self.device, self.dtype, cfg)
        models.apply_options(self.pipe, cfg, self.device)
        if cfg.compile:
            models.compile_unet(self.pipe, self.device)
        reporter.info(f"loaded in {time.monotonic() - t0:.1f}s")
        self.base_scheduler = self.pipe.scheduler
        self.schedulers: dict[str, Any] = {}
        self.default_w, self.default_h = models.default_size(self.pipe)
        self.warmed: set = set()
        # Text encodings per (prompt, negative prompt, guidance on): computed once per run, not per batch.
        self.embeds: dict[tuple, Any] = {}
        self.can_embed = "prompt_embeds" in inspect.signature(getattr(self.pipe, "encode_prompt", len)).parameters

    def size(self, job: prompts.Job) -> tuple[int, int]:
        return job.W or self.default_w, job.H or self.default_h

    def scheduler(self, name: str):
        from .models import make_scheduler

        if name == "model":
            return self.base_scheduler
        if name not in self.schedulers:
            self.schedulers[name] = make_scheduler(name, self.base_scheduler.config)
        return self.schedulers[name]

    def generate(self, batch: list[prompts.Job], stop: Optional["Stop"] = None) -> tuple[list, list[bool], Any, int]:
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

        step_times: list[float] = []

        def on_step(pipe, i, t, kwargs):
            nonlocal steps_run
            if stop is not None and stop.requested:
                raise StopRequested
            step_times.append(time.monotonic())
            steps_run += 1
            self.reporter.step(steps_run, planned)
            return kwargs

        kwargs = dict(
            **self.text_inputs(batch),
            num_inference_steps=first.steps,
            guidance_scale=first.scale,
            eta=first.eta,
            generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
            output_type="pil",
            callback_on_step_end=on_step,
        )
        kwargs.update(prepared.kwargs)
        t_start = time.monotonic()
        with torch.inference_mode():
            images = self.pipe(**kwargs).images
        if self.plan.cfg.compile:
            self.report_compile((len(batch), width, height, first.scale > 1), t_start, step_times)
        flags = self.checker.check(images) if self.checker else [False] * len(images)
        return [black_like(im) if f else im for im, f in zip(images, flags)], flags, prepared.depth, steps_run


    def text_inputs(self, batch: list[prompts.Job]) -> dict[str, Any]:
        """Prompts as cached embeddings where the pipeline allows it (all but instruct-pix2pix): each prompt
        is encoded alone, once, so an image's conditioning does not depend on its batch."""
        if not self.can_embed:
            return {"prompt": [j.prompt for j in batch], "negative_prompt": [j.negative_prompt for j in batch]}
        import torch

        guided = batch[0].scale > 1
        pairs = []
        for job in batch:
            key = (job.prompt, job.negative_prompt, guided)
            if key not in self.embeds:
                if len(self.embeds) >= 256:
                    self.embeds.pop(next(iter(self.embeds)))
                with torch.inference_mode():
                    self.embeds[key] = self.pipe.encode_prompt(job.prompt, self.pipe._execution_device, 1, guided,
                                                               job.negative_prompt)
            pairs.append(self.embeds[key])
        out = {"prompt_embeds": torch.cat([pe for pe, _ in pairs])}
        if guided:
            out["negative_prompt_embeds"] = torch.cat([ne for _, ne in pairs])
        return out


    def report_compile(self, shape: tuple, t_start: float, step_times: list[float]) -> None:
        """--compile: the first step of each new batch shape compiles the UNet; its extra time over the
        later steps is the compile time, reported apart."""
        if shape in self.warmed or not step_times:
            return
        self.warmed.add(shape)
        first = step_times[0] - t_start
        later = sorted(b - a for a, b in zip(step_times, step_times[1:]))
        typical = later[len(later) // 2] if later else 0.0
        self.reporter.info(f"compiled the UNet in {max(0.0, first - typical):.1f}s (first step {first:.1f}s, "
                           f"later steps {typical:.2f}s each)")


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


class StopRequested(Exception):
    """Raised inside the pipeline (from the step callback) to abandon the batch on SIGINT/SIGTERM."""


class Stop:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step or between images, never mid-write.
    A second signal interrupts at once."""

    def __init__(self):
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _failure(p: Plan, job: prompts.Job, error: str) -> dict[str, Any]:
    return {"task": p.task.name, "job_id": job.job_id(p.source.name, p.task.name), "index": job.index,
            "prompt": job.prompt, "seed": job.seed, "source": job.source, "error": error,
            "sdcli_version": __version__}


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:300]


def run(p: Plan, reporter: Reporter) -> Summary:
    """Load the model, generate every batch not already done, write samples + manifest lines and the grid.
    Never raises for a failed item, an interrupt or a finished run: the summary says what happened."""
    with Stop() as stop, resume_lock(p):
        return _run(p, reporter, stop)


@contextlib.contextmanager
def resume_lock(p: Plan):
    """--resume runs hold OUTDIR/.sdcli-resume.lock: two of them would generate the same missing jobs.
    (Plain runs need no lock: they never skip, and numbering and manifest lines are safe to share.)"""
    if not p.cfg.resume:
        yield
        return
    import fcntl
    import os

    fd = os.open(p.outdir / ".sdcli-resume.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise OutdirBusy(f"--outdir {p.outdir}: another sdcli --resume run (pid {holder}) is working in it; "
                             "wait for it to finish, or use another --outdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _run(p: Plan, reporter: Reporter, stop: Stop) -> Summary:
    from .postprocess import apply_watermark, can_watermark

    cfg = p.cfg
    t0 = time.monotonic()
    summary = Summary(task=p.task.name, outdir=str(p.outdir), total=len(p.jobs))
    summary.recovered = outputs.recover(p.outdir) if cfg.output is None else 0
    if summary.recovered:
        reporter.warn(f"recorded {summary.recovered} complete image(s) of an earlier killed run in the manifest")
    ids = {j.index: j.job_id(p.source.name, p.task.name) for j in p.jobs}
    done = outputs.completed(p.outdir) if cfg.resume else {}
    todo = [b for b in p.batches if any(ids[j.index] not in done for j in b)]
    summary.skipped = sum(1 for j in p.jobs if ids[j.index] in done)
    if summary.skipped:
        reporter.info(f"resume: {summary.skipped} of {len(p.jobs)} image(s) already complete in {p.outdir}")
    bad_rows = [j for j in p.jobs if j.error is not None and ids[j.index] not in done]
    for job in bad_rows:
        reporter.warn(f"{job.error} (skipping this row)")
        summary.failures.append(_failure(p, job, job.error))
    outputs.record_failures(p.outdir, summary.failures)
    summary.failed = len(summary.failures)
    if not todo:
        summary.timings["total_s"] = round(time.monotonic() - t0, 3)
        reporter.info("nothing to generate")
        return summary

    want_grid = not cfg.skip_grid and cfg.output is None
    if want_grid and len(p.jobs) > GRID_MAX_IMAGES:
        reporter.warn(f"no grid for a run of {len(p.jobs)} images (at most {GRID_MAX_IMAGES}); the samples are all saved")
        want_grid = False
    gen = Generator(p, reporter)
    summary.timings["load_s"] = round(time.monotonic() - t0, 3)
    payload = cfg.watermark_text.encode("utf-8") if cfg.watermark else None
    warned_small = False
    new_images: dict[int, Any] = {}
    reporter.start(sum(len(b) for b in todo), len(todo))
    t_gen = time.monotonic()
    try:
        for number, batch in enumerate(todo, 1):
            if stop.requested:
                raise StopRequested
            reporter.batch(number, len(todo), batch)
            try:
                images, flags, depth, steps_run = gen.generate(batch, stop)
            except (StopRequested, KeyboardInterrupt):
                raise
            except Exception as e:
                if isinstance(e, SdcliError) and not isinstance(e, UsageError):
                    raise
                message = f"generation failed in batch {number} ({batch[0].source}): {type(e).__name__}: {_first_line(e)}"
                failures = [_failure(p, j, message) for j in batch if ids[j.index] not in done]
                outputs.record_failures(p.outdir, failures)
                summary.failures += failures
                summary.failed += len(failures)
                reporter.warn(message)
                if cfg.fail_fast:
                    break
                continue
            for job, image, flagged in zip(batch, images, flags):
                if ids[job.index] in done:
                    continue  # --resume regenerated the whole batch (identical pixels) for its missing images
                marked = payload is not None and can_watermark(*image.size)
                if payload is not None and not marked and not warned_small:
                    reporter.warn(f"images under 256x256 pixels ({image.size[0]}x{image.size[1]}) are saved "
                                  "without the invisible watermark")
                    warned_small = True
                if marked:
                    image = apply_watermark(image, payload)
                summary.unwatermarked += payload is not None and not marked
                rec = record_for(p, gen, job, len(batch), steps_run, flagged, cfg.watermark_text if marked else None)
                path = _save(p, job, image, depth, rec, summary)
                summary.generated += 1
                summary.flagged += flagged
                reporter.image(job.index, path, job.seed, flagged)
                if want_grid:
                    new_images[job.index] = image
        if new_images and not stop.requested:
            summary.grid = write_grid(p, grid_images(p, new_images, done), payload, reporter)
    except (StopRequested, KeyboardInterrupt):
        summary.interrupted = True
    except OSError as e:
        message = outputs.disk_error(e, p.outdir)
        if message is None:
            raise
        raise SdcliError(message) from None
    finally:
        reporter.close()
        summary.timings["generate_s"] = round(time.monotonic() - t_gen, 3)
        summary.timings["total_s"] = round(time.monotonic() - t0, 3)
        if summary.generated:
            summary.timings["per_image_s"] = round(summary.timings["generate_s"] / summary.generated, 3)
    summary.interrupted = summary.interrupted or stop.requested
    return summary


def _save(p: Plan, job: prompts.Job, image, depth, rec: dict[str, Any], summary: Summary) -> str:
    """Write one image (numbered sample, or --output) with its manifest line; returns its path."""
    cfg = p.cfg
    parameters = a1111_for(p, rec, job)
    if cfg.output is not None:
        data = outputs.encode_image(image, Path(cfg.output).suffix, parameters, rec)
        written = outputs.write_exact(Path(cfg.output), data)
        outputs.append_manifest(p.outdir, [{**rec, "path": outputs.relpath(written, p.outdir),
                                             "sha256": outputs.sha256(data), "status": "ok"}])
    elif cfg.skip_save:
        return ""
    else:
        def save_depth(target: Path) -> dict[str, Any]:
            if depth is None or not cfg.save_depth:
                return {}
            path = outputs.write_exact(target.with_name(target.stem + "-depth.png"),
                                       outputs.encode_png(depth, "", {"depth_for": outputs.relpath(target, p.outdir)}))
            return {"depth_path": outputs.relpath(path, p.outdir)}

        written, _ = outputs.save_sample(p.outdir, outputs.encode_png(image, parameters, rec), rec, save_depth)
    summary.images.append(str(written))
    return outputs.relpath(written, p.outdir)


def grid_images(p: Plan, new: dict[int, Any], done: dict[str, dict[str, Any]]) -> list:
    """Every image of the job set in order: this run's, and (with --resume) those already on disk."""
    from PIL import Image

    out = []
    for job in p.jobs:
        if job.index in new:
            out.append(new[job.index])
            continue
        rec = done.get(job.job_id(p.source.name, p.task.name))
        if rec is not None:
            with Image.open(p.outdir / rec["path"]) as im:
                out.append(im.convert("RGB"))
    return out


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
