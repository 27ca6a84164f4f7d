"""The options of ``sdcli train`` as one typed record, and every check that needs no model: the image folder,
the output file and its work folder, the token, the numbers. Pure but for reading the folder and config files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UsageError

KINDS = ("embedding", "lora")
DEFAULT_LR = {"embedding": 5e-3, "lora": 1e-4}
# diffusers' textual_inversion.py imagenet_templates_small, first eight
TEMPLATES = ["a photo of a {token}", "a rendering of a {token}", "a cropped photo of the {token}",
             "the photo of a {token}", "a photo of a clean {token}", "a photo of my {token}",
             "a close-up photo of a {token}", "a good photo of a {token}"]


@dataclass
class TrainConfig:
    kind: str  # embedding or lora
    images: str
    out: str
    model: str = "demo"
    token: Optional[str] = None  # embedding: the new token, e.g. <my-thing>
    init_token: Optional[str] = None  # embedding: an existing one-token word its vectors start from
    vectors: int = 1  # embedding: vectors of the new token
    instance_prompt: Optional[str] = None  # lora: the prompt of every instance image, e.g. "a photo of sks dog"
    class_prompt: Optional[str] = None  # lora: prior preservation's class, e.g. "a photo of a dog"
    prior_preservation: bool = False
    class_images: int = 8  # images of the class made by the model itself (prior preservation)
    prior_weight: float = 1.0
    rank: int = 4  # lora
    train_text_encoder: bool = False  # lora: also LoRA layers on the text encoder
    templates: list[str] = field(default_factory=list)  # captions of images without x.txt ({token})
    steps: int = 500
    lr: Optional[float] = None
    batch_size: int = 1
    resolution: Optional[int] = None  # the model's native size
    flip: bool = False  # random horizontal flips
    checkpoint_every: int = 100
    validate_every: Optional[int] = None  # = checkpoint_every
    validation_prompt: Optional[str] = None
    validation_steps: int = 20
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto/fp32: fp32; bf16, fp16: accelerate mixed precision
    resume: bool = False
    quiet: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.kind]

    @property
    def work(self) -> Path:
        """Checkpoints, validation images and the loss log: OUT_DIR/NAME-train/."""
        out = Path(self.out).expanduser()
        return out.with_name(out.stem + "-train")

    def fingerprint(self) -> dict:
        """What a checkpoint must match to be resumed (--steps may grow; progress settings may change)."""
        keep = ("kind", "model", "token", "init_token", "vectors", "instance_prompt", "class_prompt",
                "prior_preservation", "class_images", "prior_weight", "rank", "train_text_encoder", "templates", "lr",
                "batch_size", "resolution", "flip", "seed", "precision")
        return {k: getattr(self, k) for k in keep}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check the options alone (no files); fill the defaults that depend on the method."""
    _require(cfg.kind in KINDS, f"train {cfg.kind}: choose embedding or lora")
    for name, low in (("steps", 1), ("vectors", 1), ("rank", 1), ("batch_size", 1), ("checkpoint_every", 1),
                      ("validation_steps", 1), ("class_images", 1)):
        _require(getattr(cfg, name) >= low, f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least {low}")
    _require(cfg.vectors <= 75, f"--vectors {cfg.vectors}: at most 75 (one prompt chunk)")
    _require(cfg.steps <= 1_000_000, f"--steps {cfg.steps}: at most 1000000")
    _require(cfg.lr is None or 0 < cfg.lr <= 1, f"--lr {cfg.lr}: must be above 0 and at most 1")
    _require(cfg.prior_weight >= 0, f"--prior-weight {cfg.prior_weight}: must not be negative")
    _require(0 <= cfg.seed < 2**63, f"--seed {cfg.seed}: must be 0 to 2^63-1")
    _require(cfg.resolution is None or (8 <= cfg.resolution <= 4096 and cfg.resolution % 8 == 0),
             f"--resolution {cfg.resolution}: a multiple of 8 from 8 to 4096")
    _require(cfg.precision in ("auto", "fp32", "bf16", "fp16"), f"--precision {cfg.precision}: choose auto, fp32, bf16 or fp16")
    if cfg.kind == "embedding":
        _require(bool(cfg.token), "--token: give the new token, e.g. --token '<my-thing>'")
        _require(bool(cfg.init_token), "--init-token: give an existing one-word token its vectors start from, e.g. --init-token toy")
        _require(not any(c.isspace() for c in cfg.token), f"--token {cfg.token!r}: one word, without spaces")
        cfg.templates = cfg.templates or list(TEMPLATES)
        _require(all("{token}" in t for t in cfg.templates), "--template: each needs {token} where the token goes")
        cfg.validation_prompt = cfg.validation_prompt or cfg.templates[0]
    else:
        _require(bool(cfg.instance_prompt), "--instance-prompt: give the prompt of your images, e.g. 'a photo of sks dog'")
        _require(not cfg.prior_preservation or bool(cfg.class_prompt),
                 "--prior-preservation: needs --class-prompt, e.g. 'a photo of a dog'")
        cfg.templates = cfg.templates or [cfg.instance_prompt]
        cfg.validation_prompt = cfg.validation_prompt or cfg.instance_prompt
    cfg.validate_every = cfg.validate_every or cfg.checkpoint_every
    _require(cfg.validate_every >= 1, f"--validate-every {cfg.validate_every}: must be at least 1")
    return cfg


def check_out(cfg: TrainConfig) -> Path:
    """The output file: NAME.safetensors in a folder that exists and can be written."""
    out = Path(cfg.out).expanduser()
    _require(out.suffix == ".safetensors", f"--out {cfg.out}: name a .safetensors file, e.g. thing.safetensors")
    _require(not out.is_dir(), f"--out {cfg.out}: is a folder; name a .safetensors file in it")
    folder = out.parent
    _require(folder.is_dir(), f"--out {cfg.out}: the folder {folder} does not exist; create it first")
    _require(os.access(folder, os.W_OK | os.X_OK), f"--out {cfg.out}: the folder {folder} is not writable; "
                                                   "choose another --out")
    work = cfg.work
    if work.exists() and not cfg.resume and any(p.name.startswith("checkpoint-") for p in work.iterdir()):
        raise UsageError(f"--out {cfg.out}: {work} holds checkpoints of an earlier training; add --resume to "
                         "continue it, or choose another --out")
    return out


def check_token(cfg: TrainConfig, vocab: frozenset) -> None:
    """The new token must be new, the init token one token of the vocabulary (CLIP spells a word as word</w>)."""
    if cfg.kind != "embedding" or not vocab:
        return
    token = cfg.token.lower()
    for t in [token] + [f"{token}_{i}" for i in range(1, cfg.vectors)]:
        _require(t not in vocab and f"{t}</w>" not in vocab,
                 f"--token {cfg.token}: '{t}' is already in the model's vocabulary; choose a new word, e.g. <{token.strip('<>')}-1>")
    init = cfg.init_token.lower()
    _require(f"{init}</w>" in vocab, f"--init-token {cfg.init_token}: not one token of the model's vocabulary; "
                                     "choose a common single word (e.g. toy, object, style)")

