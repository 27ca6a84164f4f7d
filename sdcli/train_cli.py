"""``sdcli train embedding`` and ``sdcli train lora``: the options (Typer only; the training code is imported
when a command runs). Errors go up to cli.main, the one place they become exit codes."""

from __future__ import annotations

import inspect
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


# The options both commands take, after each command's own: (name, type, option).
SHARED = [("model", str, MODEL), ("template", Optional[List[str]], TEMPLATE), ("steps", int, STEPS),
          ("lr", Optional[float], LR), ("batch_size", int, BATCH), ("resolution", Optional[int], RES),
          ("flip", bool, FLIP), ("checkpoint_every", int, CKPT), ("validate_every", Optional[int], VAL),
          ("validation_prompt", Optional[str], VALP), ("validation_steps", int, VALS), ("seed", int, SEED),
          ("device", str, DEVICE), ("precision", str, PREC), ("resume", bool, RESUME), ("json", bool, JSON),
          ("quiet", bool, QUIET)]

EMBEDDING = [("images", str, IMAGES), ("token", str, O(..., "--token", help="The new token, e.g. '<my-thing>'.")),
             ("init_token", str, O(..., "--init-token", help="An existing one-token word its vectors start from.")),
             ("out", str, OUT), ("vectors", int, O(1, "--vectors", help="Vectors of the new token [1]."))]
LORA = [("images", str, IMAGES),
        ("instance_prompt", str, O(..., "--instance-prompt", help="Prompt of your images, e.g. 'a photo of sks dog'.")),
        ("out", str, OUT),
        ("class_prompt", Optional[str], O(None, "--class-prompt", help="The class, e.g. 'a photo of a dog' (prior preservation).")),
        ("prior_preservation", bool, O(False, "--prior-preservation", help="Also train on the model's own images of --class-prompt.")),
        ("class_images", int, O(8, "--class-images", help="How many class images the model makes [8].")),
        ("prior_weight", float, O(1.0, "--prior-weight", help="Weight of the class images' loss [1].")),
        ("rank", int, O(4, "--rank", help="LoRA rank [4].")),
        ("train_text_encoder", bool, O(False, "--train-text-encoder", help="Also LoRA layers on the text encoder."))]


def add_command(kind: str, help_text: str, own: list) -> None:
    """Register ``sdcli train KIND`` with its own options, then the shared ones (one signature from the table)."""
    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind_, default=option)
              for name, kind_, option in own + SHARED]

    def command(**values) -> None:
        _run(kind, values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    train_app.command(kind, help=help_text + " " + COMMON)(command)


add_command("embedding", "Learn a new token (textual inversion): only its embedding trains.", EMBEDDING)
add_command("lora", "Train a LoRA on the UNet (and the text encoder), DreamBooth style.", LORA)
