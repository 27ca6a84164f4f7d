"""A run's plan: every check that needs no model, and the jobs it will make. ``--dry-run`` prints it.

Nothing here loads a model: bad input fails in a fraction of a second. (``--model tiny`` only names the
cached tiny model's folder; it is built when the run loads it.)
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import backends, concepts, outputs, postprocess, prompts, shards, tasks
from .config import RunConfig
from .errors import UsageError
from .models import Runtime, Source, resolve_runtime, resolve_source
from .precision import unet_bytes


@dataclass
class Plan:
    cfg: RunConfig
    task: tasks.Task
    jobs: list[prompts.Job]
    batches: list[list[prompts.Job]]
    outdir: Path
    source: Source
    runtime: Optional[Runtime]  # None: resolved when the run loads (it needs torch to ask for a GPU)
    concepts: concepts.RunConcepts = field(default_factory=concepts.RunConcepts)  # LoRAs, embeddings, VAEs to load
    notes: list[str] = field(default_factory=list)  # for the user (the CLI prints them as info)
    warnings: list[str] = field(default_factory=list)
    shard: shards.Shard = field(default_factory=shards.Shard)  # this process's share (scale-out)
    backend: backends.Backend = field(default_factory=lambda: backends.Backend("torch"))  # what runs UNet and VAE

    @property
    def share(self) -> list[list[prompts.Job]]:
        """The batches this process makes: all of them, or its shard's."""
        return self.shard.share(self.batches)

    def exact_path(self, job: prompts.Job) -> Optional[Path]:
        """Where an image goes when it is not a numbered sample: instruct-edit's --output, or inpaint's --indir
        with one image per pair (OUTDIR/x.png, named after the input, as CompVis inpaint.py)."""
        if self.cfg.output is not None:
            return Path(self.cfg.output)
        if self.named_after_inputs:
            return self.outdir / (Path(job.inputs.image.path).stem + outputs.suffix_of(self.cfg.format))
        return None

    @property
    def named_after_inputs(self) -> bool:
        return self.cfg.indir is not None and self.cfg.n_samples * self.cfg.n_iter == 1

    def dry_run(self) -> list[dict[str, Any]]:
        """One line per job, as ``--dry-run`` prints them."""
        mine = {j.index for b in self.share for j in b} if self.shard.sharded else None
        return [{"index": j.index, "prompt": j.prompt, "seed": j.seed, "steps": j.steps, "scale": j.scale,
                 "W": j.W, "H": j.H, "scheduler": j.scheduler,
                 **({"loras": [f"{r.name}:{r.weight:g}" for r in j.concepts.loras]} if j.concepts and j.concepts.loras else {}),
                 **({"embeddings": [e.token for e in j.concepts.embeddings]} if j.concepts and j.concepts.embeddings else {}),
                 **({"error": j.error} if j.error else {})}
                for j in self.jobs if mine is None or j.index in mine or (j.error and self.shard.index == 0)]


def plan(cfg: RunConfig, dry_run: bool = False) -> Plan:
    """Everything that can be checked before the model loads: prompts, inputs, outdir, model source, device,
    precision and backend, the safety checker. A real run creates the outdir; a dry run creates nothing."""
    outdir_for = outputs.check_outdir if dry_run else outputs.prepare_outdir
    cfg = backends.settle_device(cfg)
    task = tasks.get(cfg.task)
    task.check(cfg)
    notes = []
    shard = shards.detect(cfg.shard, os.environ)
    if shard.sharded and cfg.seed is None:
        raise UsageError(f"{shard.describe()}: every process would pick its own random seed; give --seed")
    if cfg.seed is None:  # instruct-edit, as edit_cli.py: a random seed, printed and recorded
        cfg = dataclasses.replace(cfg, seed=random.randint(0, 2**32 - 1))
        notes.append(f"seed {cfg.seed} (random; --seed {cfg.seed} makes these images again)")
    rows = task.expand_rows(cfg, prompts.rows_for(cfg, task.row_keys))
    source = resolve_source(cfg.model or task.default_model, cfg, cfg.task)
    concepts.check_vae(cfg)
    run_concepts = concepts.attach(cfg, rows, source)
    jobs = prompts.make_jobs(cfg, rows, source.name, task.name)
    if cfg.model == "demo" and task.name == "depth2img" and any(job.inputs.depth_map is None for job in jobs):
        raise UsageError("--model demo: the demo depth model has no trained depth estimator; give the depth with "
                         "--depth-map FILE (white = near)")
    warnings = [w for w in (prompts.ignored_eta(cfg, rows),) if w]
    batches = prompts.batches(jobs, cfg.n_samples)
    if cfg.output is not None:
        if len(jobs) != 1:
            raise UsageError(f"--output {cfg.output}: writes one image, but this run makes {len(jobs)}; "
                             "use --n_samples 1 --n_iter 1 and one input, or --outdir")
        if Path(cfg.output).is_dir():
            raise UsageError(f"--output {cfg.output}: is a folder; give a file name ending in .png, .jpg or .webp")
        if Path(cfg.output).suffix.lower() not in outputs.FORMATS:
            raise UsageError(f"--output {cfg.output}: unknown image type; end it in .png, .jpg or .webp")
        outdir = outdir_for(str(Path(cfg.output).parent), need_samples=False)
    elif cfg.indir is not None and cfg.n_samples * cfg.n_iter == 1:
        outdir = outdir_for(cfg.outdir or task.outdir, need_samples=False)
        if outdir.resolve() == Path(cfg.indir).expanduser().resolve():
            raise UsageError(f"--outdir {cfg.outdir}: is the --indir folder; the results (named after the inputs) "
                             "would replace them; give another --outdir")
    else:
        outdir = outdir_for(cfg.outdir or task.outdir, need_samples=not cfg.skip_save)
    # A dry run checks the device now; a real run does when it has taken its --resume lock (importing torch
    # to ask for a GPU costs a second or two), unless it needs no torch for that (--device cpu).
    # Any backend but torch needs the device now (--backend openvino: the CPU only).
    # --backend auto weighs the UNet's size first (no torch): a small one stays on torch whatever the device.
    weights = unet_bytes(source) if cfg.backend == "auto" else None
    needs_device = cfg.backend == "openvino" or (cfg.backend == "auto" and backends.large(weights))
    runtime = resolve_runtime(cfg, shard.local_rank, source) if dry_run or cfg.device == "cpu" or needs_device else None
    backend = backends.choose(cfg, runtime.device if runtime else "", jobs, weights)
    if cfg.safety_checker:
        postprocess.find_checker(cfg.safety_checker_source, source)
    if shard.sharded:
        notes.append(f"{shard.describe()}: {sum(map(len, shard.share(batches)))} of the run's {len(jobs)} image(s)")
    return Plan(cfg, task, jobs, batches, outdir, source, runtime, run_concepts, notes, warnings, shard, backend)
