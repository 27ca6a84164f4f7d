"""What the checks before loading need to know of a model (cross-attention width, text-encoder width and
depth, vocabulary), read from its config files without loading it; unknown facts are None and skip their check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ModelUnavailable


@dataclass(frozen=True)
class ModelFacts:
    """What the checks before loading need to know of the model, from its config files (empty if unknown)."""

    cross_attention_dim: Optional[int] = None
    text_width: Optional[int] = None
    text_layers: Optional[int] = None
    vocab: frozenset = frozenset()
    image_size: Optional[int] = None  # the UNet's native image size in pixels (sample_size x the VAE's scale)


def model_facts(source) -> ModelFacts:
    folder = _config_folder(source)
    if folder is None:
        return ModelFacts()

    def read(*parts: str) -> dict:
        try:
            data = json.loads((folder.joinpath(*parts)).read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    unet, text = read("unet", "config.json"), read("text_encoder", "config.json")
    fast = read("tokenizer", "tokenizer.json")  # transformers 5 saves only this; 4 also vocab.json
    vocab = set(read("tokenizer", "vocab.json"))
    model = fast.get("model") if isinstance(fast.get("model"), dict) else {}
    vocab.update(model.get("vocab") or {})
    vocab.update(t.get("content", "") for t in fast.get("added_tokens") or [] if isinstance(t, dict))
    vae_blocks = read("vae", "config.json").get("block_out_channels")
    sample = unet.get("sample_size")
    size = sample * 2 ** (len(vae_blocks) - 1) if isinstance(sample, int) and isinstance(vae_blocks, list) else None
    return ModelFacts(unet.get("cross_attention_dim") if isinstance(unet.get("cross_attention_dim"), int) else None,
                      text.get("hidden_size"), text.get("num_hidden_layers"), frozenset(vocab), size)


class LazyFacts:
    """ModelFacts read on first use: a plain run reads no config file."""

    def __init__(self, source):
        self.source, self.facts = source, None

    def __getattr__(self, name: str):
        if self.facts is None:
            self.facts = model_facts(self.source)
        return getattr(self.facts, name)


def _config_folder(source) -> Optional[Path]:
    if source.kind == "folder":
        return Path(source.location)
    if source.kind == "single_file" and source.config and Path(source.config).is_dir():
        return Path(source.config)
    if source.kind == "hub":
        from .models import _hub_snapshot

        try:
            return _hub_snapshot(source.location, "--model")
        except ModelUnavailable:
            return None
    return None
