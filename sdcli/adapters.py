"""LoRA files: ``--lora PATH[:WEIGHT]``, ``<lora:NAME:WEIGHT>`` tags resolved in ``--lora-dir``, their checks
before the model loads, and their loading through diffusers' ``load_lora_weights`` (peft).

Every LoRA file a run names is loaded once, as its own adapter; each batch then sets the adapters and weights
of its jobs (``set_adapters``), so rows with different LoRA sets switch cheaply. ``--fuse-lora`` merges the
one LoRA set of a run into the weights instead (faster per step).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import hashes, weightfiles
from .errors import ModelUnavailable, UsageError, first_line, suggest

SUFFIXES = (".safetensors",) + weightfiles.PICKLES
_SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+)))?$")
ARCHITECTURES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 4096: "SD 3 / Flux"}
# A cross-attention key (its LoRA down matrix is (rank, cross-attention width)) in the layouts diffusers reads.
_CROSS_KEY = re.compile(r"attn2[._]to_k.*(lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$")
_TEXT_KEY = re.compile(r"(self_attn[._]q_proj).*(lora_down|lora_A|lora\.down|lora_linear_layer\.down)\.weight$")


@dataclass(frozen=True)
class LoraRef:
    """One LoRA as a job uses it."""

    name: str  # the file's stem: A1111's name for it
    path: str
    sha256: str
    addnet: str  # A1111's "Lora hashes" hash (of the tensors, not the header)
    weight: float

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "sha256": self.sha256, "weight": self.weight}


def architecture(width: Optional[int]) -> str:
    return ARCHITECTURES.get(width, f"a model with {width}-wide cross-attention") if width else "unknown"


def parse_spec(spec: str, where: str) -> tuple[str, float]:
    """``PATH[:WEIGHT]`` -> (path, weight)."""
    m = _SPEC.match(spec.strip())
    if not m or not m.group("path"):
        raise UsageError(f"{where} {spec!r}: expected PATH or PATH:WEIGHT, e.g. style.safetensors:0.8")
    return m.group("path"), float(m.group("weight")) if m.group("weight") is not None else 1.0


class LoraChecker:
    """Checks LoRA files against the model (once per file) and resolves tag names in --lora-dir."""

    def __init__(self, facts, lora_dir: Optional[str], allow_pickle: bool):
        self.facts, self.allow_pickle = facts, allow_pickle
        self.lora_dir = Path(lora_dir).expanduser() if lora_dir else None
        self.seen: dict[str, tuple[str, str, str]] = {}  # resolved path -> (name, sha256, addnet)
        if self.lora_dir is not None and not self.lora_dir.is_dir():
            raise UsageError(f"--lora-dir {lora_dir}: no such folder")

    def ref(self, path: str, weight: float, where: str) -> LoraRef:
        p = Path(path).expanduser()
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in self.seen:
            self.seen[key] = self.check(p, f"{where} {path}")
        name, sha, addnet = self.seen[key]
        return LoraRef(name, key, sha, addnet, weight)

    def by_name(self, name: str, weight: float, where: str) -> LoraRef:
        """A ``<lora:NAME:WEIGHT>`` tag: NAME.safetensors (or another LoRA suffix) in --lora-dir."""
        tag = f"{where}: <lora:{name}>"
        if self.lora_dir is None:
            raise UsageError(f"{tag}: give --lora-dir DIR (the folder holding {name}.safetensors), or use "
                             "--lora PATH")
        for suffix in SUFFIXES:
            if (self.lora_dir / f"{name}{suffix}").is_file():
                return self.ref(str(self.lora_dir / f"{name}{suffix}"), weight, where)
        names = sorted({p.stem for p in self.lora_dir.iterdir() if p.suffix.lower() in SUFFIXES})
        hint = suggest(name, names) or (f" (it has: {', '.join(names[:8])})" if names else " (it holds no LoRA files)")
        raise UsageError(f"{tag}: no {name}.safetensors in --lora-dir {self.lora_dir}{hint}")

    def check(self, path: Path, where: str) -> tuple[str, str, str]:
        if not path.is_file():
            raise UsageError(f"{where}: no such file")
        if path.suffix.lower() not in SUFFIXES:
            raise UsageError(f"{where}: not a LoRA file; give a .safetensors LoRA (diffusers, kohya or A1111 layout)")
        shapes = weightfiles.shapes(path, where, self.allow_pickle)
        keys = list(shapes)
        if not any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder", "lora_")) or ".lora" in k
                   or "lora_A" in k for k in keys):
            kind = " (it looks like a textual-inversion embedding: use --embedding)" if len(keys) <= 2 else ""
            raise UsageError(f"{where}: not a LoRA: none of its {len(keys)} tensors is a LoRA layer{kind}")
        if any(k.startswith(("lora_te2_", "text_encoder_2.", "lora_te1_")) for k in keys):
            width = 2048
        else:
            width = next((shape[1] for k, shape in shapes.items() if _CROSS_KEY.search(k) and len(shape) == 2), None)
        want = self.facts.cross_attention_dim
        if want and width and width != want:
            raise UsageError(f"{where}: this LoRA is for {architecture(width)} (cross-attention {width}) but the "
                             f"model is {architecture(want)} ({want}); use a LoRA made for this model")
        text = next((shape[1] for k, shape in shapes.items() if _TEXT_KEY.search(k) and len(shape) == 2), None)
        if self.facts.text_width and text and text != self.facts.text_width:
            raise UsageError(f"{where}: its text-encoder layers are {text} wide, the model's text encoder "
                             f"{self.facts.text_width}; use a LoRA made for this model")
        addnet = hashes.file_sha256(path, addnet=True) if path.suffix.lower() == ".safetensors" else ""
        return path.stem, hashes.file_sha256(path), addnet or hashes.file_sha256(path)


class Adapters:
    """The LoRAs of a run, loaded into a pipeline; ``activate`` sets a batch's set."""

    def __init__(self, pipe: Any, refs: list[LoraRef], allow_pickle: bool, fuse: bool):
        self.pipe = pipe
        self.names: dict[str, str] = {}  # path -> adapter name
        self.active: Optional[tuple] = None
        self.fused = False
        for ref in refs:
            if ref.path in self.names:
                continue
            name = f"lora{len(self.names)}"
            source: Any = ref.path
            if not ref.path.lower().endswith(".safetensors"):
                source = weightfiles.load(Path(ref.path), f"--lora {ref.path}", allow_pickle)
            try:
                with warnings.catch_warnings():  # peft: "Already found a peft_config ... multiple adapters" (intended)
                    warnings.simplefilter("ignore", UserWarning)
                    pipe.load_lora_weights(source, adapter_name=name)
            except Exception as e:  # diffusers/peft: ValueError, KeyError, RuntimeError (shape mismatch)
                raise ModelUnavailable(f"--lora {ref.path}: cannot load it into this model: {first_line(e)}") from e
            self.names[ref.path] = name
        if fuse and refs:
            self.activate(tuple(refs))
            pipe.fuse_lora(adapter_names=list(dict.fromkeys(self.names[r.path] for r in refs)))
            pipe.unload_lora_weights()
            self.fused = True

    def activate(self, loras: tuple) -> None:
        """The batch's LoRAs at their weights; none: the base model."""
        if self.fused or not self.names or loras == self.active:
            return
        if not loras:
            self.pipe.disable_lora()
        else:
            weights: dict[str, float] = {}
            for ref in loras:  # a file named twice: its last weight
                weights[self.names[ref.path]] = ref.weight
            self.pipe.enable_lora()
            self.pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
        self.active = loras
