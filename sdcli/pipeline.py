"""A loaded pipeline (with its safety checker) that turns a batch of jobs into images: ``BatchResult``."""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import concepts, hashes, models, postprocess, schedulers
from .prompt_syntax import strip_lora_tags
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
    truncated: frozenset = frozenset()  # prompts (and negative prompts) cut to the text encoder's window


class LoadedPipeline:
    """The model loaded on its device, a cache of schedulers and prompt encodings, and the safety checker."""

    def __init__(self, p: Plan, reporter: Reporter):
        cfg = p.cfg
        self.plan, self.reporter = p, reporter
        models.quiet_libraries()
        runtime = p.runtime or models.resolve_runtime(cfg, p.shard.local_rank, p.source)
        self.device, self.dtype = runtime.device, runtime.dtype
        self.backend = p.backend.name
        if self.backend == "openvino":  # what stays on torch runs in fp32; the precision is OpenVINO's (its hint)
            import torch

            self.dtype = torch.float32
        self.facts = RunFacts.of(p.task.name, p.source, self.device, runtime.dtype_name, runtime.auto)
        why = f" (--precision auto: {runtime.auto})" if runtime.auto else ""
        reporter.info(f"loading {p.source.name} ({p.source.kind}) on {self.device}, {runtime.dtype_name}{why}")
        self.facts = dataclasses.replace(self.facts, backend=self.backend)
        reporter.info(p.backend.describe())
        t0 = time.monotonic()
        p.source.materialize()
        self.checker = None
        if cfg.safety_checker:  # first: a missing checker stops the run before the (slow) model load
            self.checker = postprocess.load_safety_checker(cfg.safety_checker_source, p.source, self.device, self.dtype)
        # A1111's "Model hash" (read once per weights file; cached by path, size and mtime)
        self.facts = dataclasses.replace(self.facts, model_sha256=hashes.model_sha256(p.source, getattr(cfg, "variant", None)))
        given = self.openvino_cached(p, runtime.precision) if self.backend == "openvino" else None
        self.pipe = models.load_pipeline(p.task.pipeline_class, p.source, self.device, self.dtype, cfg, given)
        concepts.check_geometry(self.pipe, cfg)
        self.load_concepts(p)
        models.apply_options(self.pipe, cfg, self.device)
        if self.backend == "openvino":
            self.swap_openvino(p, runtime.precision)
        if cfg.compile:
            models.compile_unet(self.pipe, self.device)
        reporter.info(f"loaded in {time.monotonic() - t0:.1f}s")
        self.base_scheduler = self.pipe.scheduler
        self.settle_model_eta()
        self.schedulers: dict[str, Any] = {}
        self.default_w, self.default_h = models.default_size(self.pipe)
        self.warmed: set = set()
        # Text encodings per (prompt, negative prompt, guidance on, how read, LoRAs): once per run, not per batch.
        self.embeds: dict[tuple, Any] = {}
        self.dropped: dict[str, str] = {}  # text -> the words the text encoder's window cut off ("" if none)
        self.can_embed = "prompt_embeds" in inspect.signature(type(self.pipe).__call__).parameters

    def load_concepts(self, p: Plan) -> None:
        """The run's embeddings and LoRAs (each loaded once) and its per-row VAEs; the prompt encoder."""
        from . import adapters, embeddings
        from .textencode import PromptEncoder

        cfg, rc = p.cfg, p.concepts
        t0 = time.monotonic()
        embeddings.load_all(self.pipe, rc.embeddings, cfg.allow_unsafe_pickle)
        fuse = cfg.fuse_lora or self.backend == "openvino"  # OpenVINO converts the UNet with its LoRAs fused in
        self.adapters = adapters.Adapters(self.pipe, rc.loras, cfg.allow_unsafe_pickle, fuse) if rc.loras else None
        self.vaes = {cfg.vae: self.pipe.vae}
        for spec in rc.vaes:
            self.vaes[spec] = concepts.load_vae(dataclasses.replace(cfg, vae=spec), p.source, self.dtype).to(self.device)
        self.encoder = PromptEncoder(self.pipe)
        if not rc.empty:
            self.reporter.info(f"loaded {len(rc.loras)} LoRA(s), {len(rc.embeddings)} embedding(s), {len(rc.vaes)} "
                               f"extra VAE(s) in {time.monotonic() - t0:.1f}s" + (" (LoRAs fused)" if fuse and rc.loras else ""))

    def openvino_cached(self, p: Plan, precision: str):
        """The UNet and VAE straight from the OpenVINO cache, their torch weights never read (a run without
        LoRAs or --vae whose parts are all cached); None otherwise."""
        from . import openvino_backend

        if p.concepts.loras or p.cfg.vae is not None:
            return None
        return openvino_backend.preload(p.source, p.cfg.variant, precision, self.facts.model_sha256,
                                        encoder=p.task.name != "txt2img", log=self.reporter.info,
                                        warn=self.reporter.warn)

    def swap_openvino(self, p: Plan, precision: str) -> None:
        """--backend openvino: the UNet and every VAE of the run replaced by their OpenVINO conversions."""
        from . import openvino_backend

        self.vaes = openvino_backend.swap(
            self.pipe, self.vaes, precision=precision, source=p.source, variant=p.cfg.variant,
            unet_sha256=self.facts.model_sha256, loras=[[r.sha256, r.weight] for r in p.concepts.loras],
            encoder=p.task.name != "txt2img", log=self.reporter.info, warn=self.reporter.warn)
        self.pipe.vae = self.vaes[p.cfg.vae]

    def settle_model_eta(self) -> None:
        """``--scheduler model``: only now is it known whether the model's scheduler uses eta. If it does not,
        its jobs record eta null (as ``schedulers.eta_used`` does for the named ones); their ids, computed
        by the plan from what was asked, stay the same for --resume."""
        if schedulers.takes_eta(self.base_scheduler):
            return
        jobs = [j for j in self.plan.jobs if j.scheduler == schedulers.MODEL and j.eta is not None]
        if any(j.eta for j in jobs):
            self.reporter.warn(f"--eta: the model's own scheduler ({type(self.base_scheduler).__name__}) ignores "
                               "eta; its images record eta null. Use --scheduler ddim for eta")
        for job in jobs:
            job.eta = None

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
        first = batch[0]
        width, height = self.size(first)
        self.pipe.scheduler = self.scheduler(first.scheduler)
        c = first.concepts or concepts.Concepts()
        if self.adapters is not None:
            self.adapters.activate(c.loras)
        self.pipe.vae = self.vaes[c.vae]
        truncated = frozenset(t for j in batch for t in (j.prompt, j.negative_prompt)
                              if c.syntax == "none" and self.cut_off(strip_lora_tags(t)))
        images, prepared, steps_run = [], None, 0
        for jobs, text in self.text_groups(batch):  # one group unless prompts differ in length (chunks)
            prepared = self.plan.task.prepare(self.pipe, jobs, width, height)
            made, steps_run = self.run_pipeline(jobs, text, prepared, width, height, stopped)
            images += made
        flags = self.checker.check(images) if self.checker else [False] * len(images)
        images = [postprocess.black_like(im) if f else im for im, f in zip(images, flags)]
        return BatchResult(images, flags, width, height, steps_run, prepared.depth, truncated)

    def run_pipeline(self, batch: list[Job], text: dict, prepared, width: int, height: int,
                     stopped: Callable[[], bool]) -> tuple[list, int]:
        """One pipeline call: the images (before the safety checker) and the denoising steps it ran."""
        import torch

        first = batch[0]
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
            **text,
            num_inference_steps=first.steps,
            guidance_scale=first.scale,
            eta=first.eta or 0.0,  # None: the scheduler ignores it
            generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
            output_type="pil",
            callback_on_step_end=on_step,
        )
        kwargs.update(prepared.kwargs)
        t_start = time.monotonic()
        with torch.inference_mode():
            images = self.plan.task.finish(batch, prepared, self.pipe(**kwargs).images)
        if self.plan.cfg.compile:
            self.report_compile((len(batch), width, height, first.scale > 1), t_start, step_times)
        return images, steps_run

    def cut_off(self, text: str) -> str:
        """The words of ``text`` beyond the text encoder's window ("" if it fits); warns once per text."""
        if text not in self.dropped:
            tokenizer = self.pipe.tokenizer
            ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
            window = tokenizer.model_max_length - 2  # start and end tokens
            self.dropped[text] = tokenizer.decode(ids[window:]).strip() if len(ids) > window else ""
            if self.dropped[text]:
                self.reporter.warn(f"prompt longer than the text encoder's {window} tokens; these words are "
                                   f"dropped: {self.dropped[text]!r}")
        return self.dropped[text]

    def text_groups(self, batch: list[Job]) -> list[tuple[list[Job], dict[str, Any]]]:
        """The batch's text inputs: cached embeddings (each prompt encoded alone, so an image's conditioning does
        not depend on its batch), split into groups of equal length (a long prompt has more 75-token chunks);
        or, for a pipeline that cannot take embeddings and prompts it reads itself, the texts."""
        import torch

        c = batch[0].concepts or concepts.Concepts()
        guided = batch[0].scale > 1
        if not self.can_embed or not self.encoder.native and not any(
                self.encoder.needs_embeds(j.prompt, j.negative_prompt, c.syntax, c.clip_skip) for j in batch):
            return [(batch, {"prompt": [strip_lora_tags(j.prompt) for j in batch],
                             "negative_prompt": [strip_lora_tags(j.negative_prompt) for j in batch]})]
        pairs = []
        for job in batch:
            key = (job.prompt, job.negative_prompt, guided, c.syntax, c.clip_skip, c.loras)
            if key not in self.embeds:
                if len(self.embeds) >= 256:
                    self.embeds.pop(next(iter(self.embeds)))
                self.embeds[key] = self.encoder.encode(job.prompt, job.negative_prompt, guided, c.syntax, c.clip_skip)
            pairs.append(self.embeds[key])
        groups: dict[int, list[int]] = {}
        for i, (pe, _) in enumerate(pairs):
            groups.setdefault(pe.shape[1], []).append(i)
        out = []
        for members in groups.values():
            text = {"prompt_embeds": torch.cat([pairs[i][0] for i in members])}
            if guided:
                text["negative_prompt_embeds"] = torch.cat([pairs[i][1] for i in members])
            out.append(([batch[i] for i in members], text))
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
