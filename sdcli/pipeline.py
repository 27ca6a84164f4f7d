"""A loaded pipeline (with its safety checker) that turns a batch of jobs into images: ``BatchResult``."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import models, postprocess, schedulers
from .plan import Plan
from .progress import Reporter
from .prompts import Job
from .records import RunFacts


class StopRequested(Exception):
    """Raised inside the pipeline (from the step callback) to abandon the batch on SIGINT/SIGTERM."""


@dataclass
class BatchResult:
    images: list  # PIL images; those flagged by the safety checker are already black
    nsfw: list[bool]
    width: int
    height: int
    steps_run: int  # denoising steps the pipeline ran
    depth: Any = None  # depth2img: the depth map used (PIL), for --save-depth


class LoadedPipeline:
    """The model loaded on its device, a cache of schedulers and prompt encodings, and the safety checker."""

    def __init__(self, p: Plan, reporter: Reporter):
        cfg = p.cfg
        self.plan, self.reporter = p, reporter
        models.quiet_libraries()
        self.device = models.resolve_device(cfg.device)
        self.dtype = models.resolve_dtype(cfg.precision, self.device)
        models.check_options(cfg, self.device)
        precision = str(self.dtype).replace("torch.", "")
        self.facts = RunFacts.of(p.task.name, p.source, self.device, precision)
        reporter.info(f"loading {p.source.name} ({p.source.kind}) on {self.device}, {precision}")
        t0 = time.monotonic()
        p.source.materialize()
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

    def size(self, job: Job) -> tuple[int, int]:
        return job.W or self.default_w, job.H or self.default_h

    def scheduler(self, name: str):
        if name == schedulers.MODEL:
            return self.base_scheduler
        if name not in self.schedulers:
            self.schedulers[name] = schedulers.make(name, self.base_scheduler.config)
        return self.schedulers[name]

    def generate(self, batch: list[Job], stopped: Callable[[], bool] = lambda: False) -> BatchResult:
        """The images of one batch; ``stopped()`` is asked at every step (StopRequested ends the batch)."""
        import torch

        first = batch[0]
        width, height = self.size(first)
        self.pipe.scheduler = self.scheduler(first.scheduler)
        prepared = self.plan.task.prepare(self.pipe, batch, width, height)
        steps_run = 0
        step_times: list[float] = []

        def on_step(pipe, i, t, kwargs):
            nonlocal steps_run
            if stopped():
                raise StopRequested
            step_times.append(time.monotonic())
            steps_run += 1
            self.reporter.step(steps_run, first.denoising_steps)
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
        images = [postprocess.black_like(im) if f else im for im, f in zip(images, flags)]
        return BatchResult(images, flags, width, height, steps_run, prepared.depth)

    def text_inputs(self, batch: list[Job]) -> dict[str, Any]:
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
