"""The training run: checks, model, images to latents, steps through accelerate, checkpoints, --resume,
validation images, progress with the loss, the summary.

Every step's randomness (which images, captions, flips, timesteps, noise) comes from a generator seeded with
(--seed, step), so a run resumed from a checkpoint takes the same steps as one never stopped. A checkpoint is
the trained tensors and the optimizer's state as safetensors plus a JSON file (no pickles), written to a
temporary folder and renamed.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional

from .. import models
from ..errors import UsageError
from ..guards import Stop
from . import data, methods
from .settings import TrainConfig, check_out, check_token, validate

CHECKPOINT = "checkpoint-{:06d}"


def prepare(cfg: TrainConfig):
    """Every check before a model loads: options, model source, images, output, token. Returns what the run needs."""
    from ..config import load as load_config
    from ..modelfacts import model_facts

    cfg = validate(cfg)
    run_cfg = load_config("txt2img", None, None, {"model": cfg.model, "device": cfg.device})
    source = models.resolve_source(cfg.model, run_cfg, "txt2img")
    facts = model_facts(source)
    if cfg.resolution is None:
        cfg.resolution = facts.image_size or 512
    examples = data.find(cfg.images, cfg.resolution)
    out = check_out(cfg)
    check_token(cfg, facts.vocab)
    return cfg, run_cfg, source, examples, out


class Trainer:
    def __init__(self, cfg: TrainConfig, reporter):
        self.cfg, self.reporter = cfg, reporter
        self.summary: dict[str, Any] = {"kind": cfg.kind}

    def run(self) -> dict:
        t0 = time.monotonic()
        cfg, run_cfg, source, examples, out = prepare(self.cfg)
        self.cfg, self.out, self.examples = cfg, out, examples
        self.fingerprint = {**cfg.fingerprint(), "images": data.fingerprint(examples), "resolution": cfg.resolution}
        start, checkpoint = self.resume_point()
        import torch
        from accelerate import Accelerator

        runtime = models.resolve_runtime(run_cfg)
        mixed = {"bf16": "bf16", "fp16": "fp16"}.get(cfg.precision, "no")
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)  # a process-wide singleton: a second training in one process (tests)
        if runtime.device.startswith("cuda:"):  # --device cuda:N: accelerate takes the current CUDA device
            torch.cuda.set_device(int(runtime.device.split(":")[1]))
        self.acc = Accelerator(mixed_precision=mixed, cpu=runtime.device == "cpu")
        self.reporter.info(f"loading {source.name} on {self.acc.device} to train {'an embedding' if cfg.kind == 'embedding' else 'a LoRA'}"
                           f" ({len(examples)} image(s) at {cfg.resolution} px, {cfg.steps} steps)")
        pipe = models.load_pipeline("StableDiffusionPipeline", source, str(self.acc.device), torch.float32, run_cfg)
        pipe.set_progress_bar_config(disable=True)
        from diffusers import DDPMScheduler

        self.pipe, self.noise_sched = pipe, DDPMScheduler.from_config(pipe.scheduler.config)
        class_latents = self.class_latents() if cfg.prior_preservation else None
        self.method = methods.make(cfg, pipe)
        self.latents = self.encode([data.load(e, cfg.resolution) for e in examples])
        self.class_set = class_latents
        self.optimizer = torch.optim.AdamW(self.method.params(), lr=cfg.learning_rate, weight_decay=0.0)
        self.optimizer = self.acc.prepare(self.optimizer)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
            self.reporter.info(f"resumed from {checkpoint} (step {start})")
        self.summary.update(resumed_from=start or None, load_s=round(time.monotonic() - t0, 2))
        self.loop(start)
        return self.summary

    # --- before loading ------------------------------------------------------------------------------

    def resume_point(self) -> tuple[int, Optional[Path]]:
        work = self.cfg.work
        if not self.cfg.resume or not work.is_dir():
            return 0, None
        found = sorted(p for p in work.iterdir() if p.is_dir() and p.name.startswith("checkpoint-"))
        for path in reversed(found):
            try:
                state = json.loads((path / "state.json").read_text())
            except (OSError, ValueError):
                continue  # unfinished or damaged: an older one
            if state.get("fingerprint") != self.fingerprint:
                raise UsageError(f"--resume: {path} was made with other settings or images; give the same options "
                                 "as the run it continues (only --steps may grow), or another --out")
            if state["step"] > self.cfg.steps:
                raise UsageError(f"--resume: {path} is at step {state['step']}, past --steps {self.cfg.steps}")
            return state["step"], path
        return 0, None

    # --- data ----------------------------------------------------------------------------------------

    def encode(self, images: list) -> list:
        """Each image's (and with --flip its mirror's) latent mean and std: a step samples from them."""
        import numpy as np
        import torch

        vae = self.pipe.vae
        out = []
        with torch.no_grad():
            for im in images:
                variants = [im] + ([im.transpose(0)] if self.cfg.flip else [])  # FLIP_LEFT_RIGHT
                x = torch.from_numpy(np.stack([np.asarray(v) for v in variants])).float().div(127.5).sub(1)
                dist = vae.encode(x.permute(0, 3, 1, 2).to(self.acc.device)).latent_dist
                out.append((dist.mean, dist.std))
        return out

    def class_latents(self) -> list:
        """Prior preservation: the model's own images of the class prompt, made once into the work folder."""
        import torch

        cfg = self.cfg
        folder = cfg.work / "class-images"
        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i in range(cfg.class_images):
            path = folder / f"{i:04d}.png"
            if not path.exists():
                g = torch.Generator().manual_seed(cfg.seed + i)
                image = self.pipe(cfg.class_prompt, height=cfg.resolution, width=cfg.resolution, generator=g,
                                  num_inference_steps=cfg.validation_steps).images[0]
                from ..outputs import encode_png, write_exact

                write_exact(path, encode_png(image, "", {}))
            from PIL import Image

            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        self.reporter.info(f"prior preservation: {len(images)} image(s) of '{cfg.class_prompt}' in {folder}")
        return self.encode(images)

    def batch(self, pool: list, captions: list, step: int, salt: int):
        """A batch of latents and captions for ``step``, drawn by its own generator."""
        import torch

        g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step * 7 + salt) % 2**63)
        n = self.cfg.batch_size
        picks = torch.randint(0, len(pool), (n,), generator=g).tolist()
        flips = torch.randint(0, 2, (n,), generator=g).tolist() if self.cfg.flip else [0] * n
        templates = torch.randint(0, 1 << 30, (n,), generator=g).tolist()
        latents = []
        for i, f in zip(picks, flips):
            mean, std = pool[i]
            noise = torch.randn(mean[f].shape, generator=g).to(mean.device)
            latents.append(mean[f] + std[f] * noise)
        scale = self.pipe.vae.config.scaling_factor
        text = [captions[i](t) for i, t in zip(picks, templates)]
        return torch.stack(latents) * scale, [self.method.caption(c) for c in text], g

    # --- a step --------------------------------------------------------------------------------------

    def loss(self, latents, captions: list[str], g):
        import torch
        import torch.nn.functional as F

        pipe, sched = self.pipe, self.noise_sched
        noise = torch.randn(latents.shape, generator=g).to(latents.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=g).to(latents.device)
        noisy = sched.add_noise(latents, noise, t)
        ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(latents.device)
        states = pipe.text_encoder(ids)[0]
        pred = pipe.unet(noisy, t, states).sample
        target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(latents, noise, t)
        return F.mse_loss(pred.float(), target.float())

    def loop(self, start: int) -> None:
        from .progress import TrainProgress

        cfg = self.cfg
        token = cfg.token.lower() if cfg.kind == "embedding" else None
        captions = [lambda pick, e=e: data.caption_for(e, cfg.templates, token, pick) for e in self.examples]
        class_captions = [lambda pick: cfg.class_prompt] * (len(self.class_set) if self.class_set else 0)
        losses: list[float] = []
        t0 = time.monotonic()
        progress = TrainProgress(self.reporter, cfg.steps, start)
        step = start
        with Stop() as stop:
            try:
                for step in range(start + 1, cfg.steps + 1):
                    with self.acc.autocast():
                        latents, text, g = self.batch(self.latents, captions, step, 0)
                        loss = self.loss(latents, text, g)
                        if self.class_set:
                            c_latents, c_text, cg = self.batch(self.class_set, class_captions, step, 1)
                            loss = loss + cfg.prior_weight * self.loss(c_latents, c_text, cg)
                    self.acc.backward(loss)
                    self.acc.clip_grad_norm_(self.method.params(), 1.0)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.method.after_step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise UsageError(f"training diverged at step {step} (loss {value}); use a smaller --lr")
                    losses.append(value)
                    progress.step(step, value)
                    self.log(step, value)
                    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                        self.save_checkpoint(step)
                    if step % cfg.validate_every == 0 or step == cfg.steps:
                        self.validate(step)
                    if stop.requested:
                        break
            finally:
                progress.close()
        interrupted = stop.requested and step < cfg.steps
        if interrupted:
            self.save_checkpoint(step)
        else:
            self.method.save(self.out)
        train_s = time.monotonic() - t0
        self.summary.update(status="interrupted" if interrupted else "ok", out=None if interrupted else str(self.out),
                            steps=cfg.steps, step=step, work=str(cfg.work), train_s=round(train_s, 2),
                            per_step_s=round(train_s / max(1, step - start), 4),
                            loss_first=round(losses[0], 5) if losses else None,
                            loss_last_10=round(sum(losses[-10:]) / len(losses[-10:]), 5) if losses else None)

    # --- checkpoints, validation, log ----------------------------------------------------------------

    def save_checkpoint(self, step: int) -> None:
        from . import checkpoints

        path = checkpoints.save(self.cfg.work, CHECKPOINT.format(step), self.method, self.optimizer, step,
                                self.fingerprint)
        self.summary.setdefault("checkpoints", []).append(str(path))

    def load_checkpoint(self, path: Path) -> None:
        from . import checkpoints

        checkpoints.load(path, self.method, self.optimizer)

    def validate(self, step: int) -> None:
        import torch

        from ..outputs import encode_png, write_exact

        cfg, pipe = self.cfg, self.pipe
        prompt = cfg.validation_prompt.replace("{token}", cfg.token.lower()) if cfg.token else cfg.validation_prompt
        for m in self.method.modules():
            m.eval()
        with torch.no_grad():
            image = pipe(prompt, height=cfg.resolution, width=cfg.resolution, num_inference_steps=cfg.validation_steps,
                         generator=torch.Generator().manual_seed(cfg.seed)).images[0]
        for m in self.method.modules():
            m.train()
        folder = cfg.work / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        path = write_exact(folder / f"step-{step:06d}.png", encode_png(image, prompt, {"step": step, "prompt": prompt}))
        self.summary.setdefault("validation", []).append(str(path))

    def log(self, step: int, loss: float) -> None:
        self.cfg.work.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.work / "loss.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "loss": round(loss, 6)}) + "\n")
