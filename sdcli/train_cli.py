"""``sdcli train embedding`` and ``sdcli train lora``: the options (Typer only; the training code is imported
when a command runs). Errors go up to cli.main, the one place they become exit codes."""

from __future__ import annotations

import json
import os
from typing import List, Optional

import typer

O = typer.Option
train_app = typer.Typer(help="Teach a model a new concept from a few images (textual inversion, LoRA).",
                        no_args_is_help=True)

COMMON = """Checkpoints (every --checkpoint-every steps), validation images (fixed seed) and loss.jsonl go to
OUT's folder as NAME-train/; --resume continues from the last checkpoint."""


def _run(kind: str, values: dict) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from .progress import make_reporter
    from .training.loop import Trainer
    from .training.settings import TrainConfig

    as_json = values.pop("json")
    values["templates"] = list(values.pop("template") or [])
    cfg = TrainConfig(kind=kind, **values)
    reporter = make_reporter(cfg.quiet, live=False)
    summary = Trainer(cfg, reporter).run()
    if summary["status"] == "ok":
        reporter.info(f"done: {summary['steps']} steps in {summary['train_s']:.1f}s; wrote {summary['out']}")
    else:
        reporter.warn(f"interrupted at step {summary['step']}; rerun the same command with --resume to finish")
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    if summary["status"] != "ok":
        raise typer.Exit(130)


def _shared(images, out, model, template, steps, lr, batch_size, resolution, flip, checkpoint_every,
            validate_every, validation_prompt, validation_steps, seed, device, precision, resume, json_, quiet) -> dict:
    return dict(images=images, out=out, model=model, template=template, steps=steps, lr=lr, batch_size=batch_size,
                resolution=resolution, flip=flip, checkpoint_every=checkpoint_every, validate_every=validate_every,
                validation_prompt=validation_prompt, validation_steps=validation_steps, seed=seed, device=device,
                precision=precision, resume=resume, json=json_, quiet=quiet)


IMAGES = O(..., "--images", help="Folder of the concept's images (.png/.jpg/.webp; optional caption x.txt beside x.png).")
OUT = O(..., "--out", help="The result: NAME.safetensors.")
MODEL = O("demo", "--model", "-m", help="Model to train on: a diffusers folder, hub id, single file, demo or tiny [demo].")
TEMPLATE = O(None, "--template", help="Caption of images without x.txt (repeatable; {token} marks the token).")
STEPS = O(500, "--steps", help="Training steps [500].")
LR = O(None, "--lr", help="Learning rate [embedding 5e-3, lora 1e-4].")
BATCH = O(1, "--batch-size", help="Images per step [1].")
RES = O(None, "--resolution", help="Training size in pixels [the model's native size].")
FLIP = O(False, "--flip", help="Random horizontal flips.")
CKPT = O(100, "--checkpoint-every", help="Save a checkpoint every N steps [100].")
VAL = O(None, "--validate-every", help="Write a validation image every N steps [--checkpoint-every].")
VALP = O(None, "--validation-prompt", help="Prompt of the validation images [the first caption template].")
VALS = O(20, "--validation-steps", help="Denoising steps of validation images [20].")
SEED = O(0, "--seed", help="Seed: the same seed and options give the same result [0].")
DEVICE = O("auto", "--device", help="auto, cpu, cuda, cuda:N or mps [auto].")
PREC = O("auto", "--precision", help="auto or fp32 (fp32 training), bf16 or fp16 (mixed precision) [auto].")
RESUME = O(False, "--resume", help="Continue from the last checkpoint of this --out.")
JSON = O(False, "--json", help="Print a JSON summary on stdout at the end.")
QUIET = O(False, "--quiet", "-q", help="Only warnings and errors on stderr.")


@train_app.command("embedding", help="Learn a new token (textual inversion): only its embedding trains. " + COMMON)
def embedding(images: str = IMAGES, token: str = O(..., "--token", help="The new token, e.g. '<my-thing>'."),
              init_token: str = O(..., "--init-token", help="An existing one-token word its vectors start from."),
              out: str = OUT, vectors: int = O(1, "--vectors", help="Vectors of the new token [1]."),
              model: str = MODEL, template: Optional[List[str]] = TEMPLATE, steps: int = STEPS,
              lr: Optional[float] = LR, batch_size: int = BATCH, resolution: Optional[int] = RES, flip: bool = FLIP,
              checkpoint_every: int = CKPT, validate_every: Optional[int] = VAL, validation_prompt: Optional[str] = VALP,
              validation_steps: int = VALS, seed: int = SEED, device: str = DEVICE, precision: str = PREC,
              resume: bool = RESUME, json_: bool = JSON, quiet: bool = QUIET) -> None:
    values = _shared(images, out, model, template, steps, lr, batch_size, resolution, flip, checkpoint_every,
                     validate_every, validation_prompt, validation_steps, seed, device, precision, resume, json_, quiet)
    _run("embedding", {**values, "token": token, "init_token": init_token, "vectors": vectors})


@train_app.command("lora", help="Train a LoRA on the UNet (and the text encoder), DreamBooth style. " + COMMON)
def lora(images: str = IMAGES, instance_prompt: str = O(..., "--instance-prompt", help="Prompt of your images, e.g. 'a photo of sks dog'."),
         out: str = OUT, class_prompt: Optional[str] = O(None, "--class-prompt", help="The class, e.g. 'a photo of a dog' (prior preservation)."),
         prior_preservation: bool = O(False, "--prior-preservation", help="Also train on the model's own images of --class-prompt."),
         class_images: int = O(8, "--class-images", help="How many class images the model makes [8]."),
         prior_weight: float = O(1.0, "--prior-weight", help="Weight of the class images' loss [1]."),
         rank: int = O(4, "--rank", help="LoRA rank [4]."),
         train_text_encoder: bool = O(False, "--train-text-encoder", help="Also LoRA layers on the text encoder."),
         model: str = MODEL, template: Optional[List[str]] = TEMPLATE, steps: int = STEPS,
         lr: Optional[float] = LR, batch_size: int = BATCH, resolution: Optional[int] = RES, flip: bool = FLIP,
         checkpoint_every: int = CKPT, validate_every: Optional[int] = VAL, validation_prompt: Optional[str] = VALP,
         validation_steps: int = VALS, seed: int = SEED, device: str = DEVICE, precision: str = PREC,
         resume: bool = RESUME, json_: bool = JSON, quiet: bool = QUIET) -> None:
    values = _shared(images, out, model, template, steps, lr, batch_size, resolution, flip, checkpoint_every,
                     validate_every, validation_prompt, validation_steps, seed, device, precision, resume, json_, quiet)
    _run("lora", {**values, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
                  "prior_preservation": prior_preservation, "class_images": class_images, "prior_weight": prior_weight,
                  "rank": rank, "train_text_encoder": train_text_encoder})
