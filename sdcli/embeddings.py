"""Textual-inversion embeddings: ``--embedding PATH[:TOKEN]`` and ``--embedding-dir DIR`` (a file
``NAME.safetensors`` is used when ``NAME`` appears in a prompt or negative prompt, as A1111 does). Checked before
the model loads; loaded with diffusers' ``load_textual_inversion``.

Layouts: diffusers (``{token: vector(s)}``, .safetensors or .bin), A1111 (.safetensors ``emb_params``, .pt
``string_to_param``). Pickles (.bin, .pt) only through torch's ``weights_only`` loader unless
``--allow-unsafe-pickle``. Tokens are lower case: CLIP's tokenizer matches them case-insensitively.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from . import hashes, weightfiles
from .errors import ModelUnavailable, UsageError, first_line

SUFFIXES = (".safetensors", ".bin", ".pt")
A1111_KEYS = ("emb_params", "string_to_param.*")
WIDTHS = {768: "SD 1.x", 1024: "SD 2.x"}


@dataclass(frozen=True)
class EmbeddingRef:
    token: str  # what a prompt writes
    path: str
    sha256: str
    vectors: int

    @property
    def name(self) -> str:
        return Path(self.path).stem

    def record(self) -> dict[str, Any]:
        return {"token": self.token, "path": self.path, "sha256": self.sha256, "vectors": self.vectors}

    def used_in(self, *texts: str) -> bool:
        pattern = re.compile(r"(?<![\w])" + re.escape(self.token) + r"(?![\w])", re.I)
        return any(pattern.search(t) for t in texts if t)


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    """``PATH[:TOKEN]`` -> (path, token or None). A path that exists as given wins over a split."""
    if Path(spec).expanduser().exists() or ":" not in spec:
        return spec, None
    path, _, token = spec.rpartition(":")
    return path, token or None


class EmbeddingChecker:
    def __init__(self, facts, allow_pickle: bool):
        self.facts, self.allow_pickle = facts, allow_pickle
        self.by_token: dict[str, EmbeddingRef] = {}

    def ref(self, spec: str, where: str) -> EmbeddingRef:
        """One --embedding (or a row's ``embedding``), checked; a token can name one file only."""
        path_text, token = parse_spec(spec)
        path = Path(path_text).expanduser()
        label = f"{where} {spec}"
        if not path.is_file():
            raise UsageError(f"{label}: no such file")
        if path.suffix.lower() not in SUFFIXES:
            raise UsageError(f"{label}: not an embedding file; give a .safetensors, .bin or .pt textual-inversion "
                             "embedding")
        shapes = weightfiles.shapes(path, label, self.allow_pickle)
        key, shape = _vectors_key(shapes, label)
        stored = key if key not in A1111_KEYS else None
        token = (token or stored or path.stem).strip().lower()
        if not token or any(c.isspace() for c in token):
            raise UsageError(f"{label}: token {token!r} must be one word without spaces; give PATH:TOKEN")
        width = shape[-1]
        if self.facts.text_width and width != self.facts.text_width:
            made = WIDTHS.get(width, f"a text encoder {width} wide")
            have = WIDTHS.get(self.facts.text_width, f"{self.facts.text_width} wide")
            raise UsageError(f"{label}: this embedding is for {made} ({width}-wide vectors) but the model's text "
                             f"encoder is {have} ({self.facts.text_width}); use an embedding made for this model")
        if token in self.facts.vocab or f"{token}</w>" in self.facts.vocab:
            raise UsageError(f"{label}: token '{token}' is already a word of the model's vocabulary; give another "
                             f"token: {path_text}:<{token}-emb>")
        ref = EmbeddingRef(token, str(path.resolve()), hashes.file_sha256(path), shape[0] if len(shape) == 2 else 1)
        old = self.by_token.get(token)
        if old is not None and old.path != ref.path:
            raise UsageError(f"{label}: token '{token}' already names {old.path}; give one of them another token "
                             "(PATH:TOKEN)")
        self.by_token[token] = ref
        return ref

    def from_dir(self, folder: Optional[str], texts: Iterable[str]) -> list[EmbeddingRef]:
        """--embedding-dir: the files whose name appears in one of the texts."""
        if folder is None:
            return []
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise UsageError(f"--embedding-dir {folder}: no such folder")
        texts = list(texts)
        out = []
        for path in sorted(root.iterdir()):
            if path.suffix.lower() in SUFFIXES and path.is_file():
                probe = EmbeddingRef(path.stem.lower(), str(path), "", 0)
                if probe.used_in(*texts):
                    out.append(self.ref(f"{path}:{path.stem.lower()}", "--embedding-dir"))
        return out


def _vectors_key(shapes: dict[str, tuple], label: str) -> tuple[str, tuple]:
    if "clip_l" in shapes or "clip_g" in shapes:
        raise UsageError(f"{label}: this embedding is for SDXL (clip_l/clip_g vectors); use one made for this model")
    for key in A1111_KEYS:
        if key in shapes:
            return key, shapes[key]
    vectors = {k: s for k, s in shapes.items() if len(s) in (1, 2)}
    if len(vectors) != 1:
        raise UsageError(f"{label}: not a textual-inversion embedding (expected one vector tensor, found "
                         f"{len(shapes)} tensors; a LoRA goes to --lora)")
    return next(iter(vectors.items()))


def load_all(pipe: Any, refs: list[EmbeddingRef], allow_pickle: bool) -> None:
    """Add each embedding's token(s) to the pipeline's tokenizer and text encoder."""
    for ref in refs:
        tensors = weightfiles.flat_tensors(weightfiles.load(Path(ref.path), f"--embedding {ref.path}", allow_pickle))
        key = next((k for k in A1111_KEYS if k in tensors), None) or next(
            k for k, v in tensors.items() if v.dim() in (1, 2))
        try:
            pipe.load_textual_inversion({ref.token: tensors[key]}, token=ref.token)
        except Exception as e:  # diffusers: ValueError (token exists, shape)
            raise ModelUnavailable(f"--embedding {ref.path}: cannot load it into this model: {first_line(e)}") from e
