"""What a run adds to or checks against the model's own parts: a VAE of the user's (``--vae``, the
instruct-pix2pix ``--vae-ckpt``, or a prompt-file row's ``vae``), the latent geometry the original scripts
state (``--C``, ``--f``), and each job's ``Concepts``: its LoRAs (adapters.py), embeddings (embeddings.py),
VAE, clip skip and prompt syntax, resolved and checked by ``attach`` before the model loads.

``check_vae`` and ``attach`` run in the plan (no model); ``load_vae`` and ``check_geometry`` with the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig
from .errors import ModelUnavailable, UsageError, first_line



def vae_folder(path: Path) -> tuple[Path, str | None]:
    """A VAE folder (``config.json`` + weights), or a model folder holding one in ``vae/``: (folder, subfolder)."""
    return (path, None) if (path / "config.json").is_file() else (path, "vae")


def check_vae(cfg: RunConfig) -> None:
    """--vae: a VAE folder, a model folder with ``vae/``, a single weights file, or a hub id; checked without
    loading it."""
    if cfg.vae is None:
        return
    from .models import PICKLE_SUFFIXES, REPO_ID_RE, SINGLE_FILE_SUFFIXES

    path = Path(cfg.vae).expanduser()
    where = f"--vae/--vae-ckpt {cfg.vae}"
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file()):
            raise ModelUnavailable(f"{where}: folder has no config.json (nor vae/config.json); give a diffusers "
                                   "AutoencoderKL folder, a model folder, or a .safetensors VAE file")
        return
    if path.is_file():
        if not cfg.vae.lower().endswith(SINGLE_FILE_SUFFIXES):
            raise UsageError(f"{where}: not a weights file; give a .safetensors VAE file or a VAE folder")
        if cfg.vae.lower().endswith(PICKLE_SUFFIXES) and not cfg.allow_unsafe_pickle:
            raise UsageError(f"{where}: a pickle checkpoint can run arbitrary code when loaded; convert it to "
                             ".safetensors, or pass --allow-unsafe-pickle if you trust its source")
        return
    if path.is_absolute() or cfg.vae.startswith((".", "~")) or not REPO_ID_RE.match(cfg.vae) \
            or cfg.vae.count("/") != 1:
        raise ModelUnavailable(f"{where}: no such file or folder, and not a hub id (owner/name)")


def load_vae(cfg: RunConfig, source: Any, dtype) -> Any:
    """The user's VAE as an ``AutoencoderKL``: a folder or hub id through ``from_pretrained``; a single file
    (original or diffusers key names) through ``from_single_file``, its config from the model's own ``vae/``
    (offline: the model's folder, cache or --model-config)."""
    from diffusers import AutoencoderKL

    from .models import offline

    path = Path(cfg.vae).expanduser()
    try:
        if path.is_dir():
            folder, sub = vae_folder(path)
            return AutoencoderKL.from_pretrained(str(folder), subfolder=sub, dtype=dtype, local_files_only=True)
        if path.is_file():
            config = source.config if source.kind == "single_file" else source.location
            local = offline() or Path(config).exists()
            if config.lower().endswith((".yaml", ".yml")):
                return AutoencoderKL.from_single_file(str(path), original_config=config, dtype=dtype,
                                                      local_files_only=local)
            return AutoencoderKL.from_single_file(str(path), config=config, subfolder="vae", dtype=dtype,
                                                  local_files_only=local)
        return AutoencoderKL.from_pretrained(cfg.vae, dtype=dtype, local_files_only=offline())
    except Exception as e:  # diffusers raises OSError/ValueError/KeyError with long texts
        raise ModelUnavailable(f"--vae {cfg.vae}: cannot load it as a VAE (AutoencoderKL): {first_line(e)}") from e


def check_geometry(pipe: Any, cfg: RunConfig) -> None:
    """The original scripts' --C (latent channels) and --f (downsampling factor), against the loaded model."""
    have = {"latent_channels": pipe.vae.config.latent_channels,
            "downsampling_factor": getattr(pipe, "vae_scale_factor", 8)}
    for key, flag, what in (("latent_channels", "--C", "this model has {} latent channels"),
                            ("downsampling_factor", "--f", "this model's VAE downsamples by {}")):
        asked = getattr(cfg, key)
        if asked is not None and asked != have[key]:
            raise UsageError(f"{flag} {asked}: {what.format(have[key])}; give {flag} {have[key]} or leave {flag} "
                             "out (sdcli takes it from the model)")


# --- what a run adds to the model: LoRAs, embeddings, per-row VAE, clip skip, prompt syntax -----------------

@dataclass(frozen=True)
class Concepts:
    """What a job adds to the model and how its prompt is read. Hashable: part of the job's batch key."""

    loras: tuple = ()  # adapters.LoraRef
    embeddings: tuple = ()  # embeddings.EmbeddingRef used by the job's prompt or negative prompt
    vae: Optional[str] = None  # the VAE spec (None: the model's own)
    vae_sha256: Optional[str] = None
    clip_skip: int = 1
    syntax: str = "a1111"

    def batch_key(self) -> tuple:
        return (self.loras, self.vae, self.clip_skip, self.syntax)

    def fields(self) -> dict[str, Any]:
        """For the job id: only what differs from a plain run (so plain runs keep their ids)."""
        out: dict[str, Any] = {}
        if self.loras:
            out["loras"] = [[r.sha256, r.weight] for r in self.loras]
        if self.embeddings:
            out["embeddings"] = sorted([e.token, e.sha256] for e in self.embeddings)
        if self.vae is not None:
            out["vae"] = self.vae_sha256 or self.vae
        if self.clip_skip != 1:
            out["clip_skip"] = self.clip_skip
        if self.syntax != "a1111":
            out["prompt_syntax"] = self.syntax
        return out

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clip_skip": self.clip_skip, "prompt_syntax": self.syntax}
        if self.loras:
            out["loras"] = [r.record() for r in self.loras]
        if self.embeddings:
            out["embeddings"] = [e.record() for e in self.embeddings]
        if self.vae is not None:
            out["vae"] = {"name": vae_name(self.vae), "source": self.vae, "sha256": self.vae_sha256}
        return out

    def a1111(self, model_sha256: Optional[str]) -> dict[str, Any]:
        """A1111's keys: VAE hash, VAE, Clip skip, Lora hashes, TI hashes; and Civitai's ``Hashes`` JSON (what
        sd-parsers and civitai.com read)."""
        def clean(name: str) -> str:
            return name.replace(":", "").replace(",", "")

        hashes = {"model": model_sha256[:10]} if model_sha256 else {}
        if self.vae_sha256:
            hashes["vae"] = self.vae_sha256[:10]
        hashes.update({f"lora:{clean(r.name)}": r.addnet[:10] for r in self.loras})
        hashes.update({f"embed:{clean(e.token)}": e.sha256[:10] for e in self.embeddings})
        return {
            "VAE hash": self.vae_sha256[:10] if self.vae_sha256 else None,
            "VAE": vae_name(self.vae) if self.vae is not None else None,
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "Lora hashes": ", ".join(f"{clean(r.name)}: {r.addnet[:12]}" for r in self.loras) or None,
            "TI hashes": ", ".join(f"{clean(e.token)}: {e.sha256[:12]}" for e in self.embeddings) or None,
            "Hashes": json.dumps(hashes, ensure_ascii=False) if len(hashes) > 1 else None,
        }


def vae_name(spec: str) -> str:
    path = Path(spec).expanduser()
    return path.name if path.exists() else spec


def vae_sha256(spec: Optional[str]) -> Optional[str]:
    """The VAE's weights sha256: a single file, or a folder's (or its vae/'s) diffusion_pytorch_model file."""
    from . import hashes

    if spec is None:
        return None
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            return hashes.file_sha256(path)
        if path.is_dir():
            folder, sub = vae_folder(path)
            folder = folder / sub if sub else folder
            files = sorted(folder.glob("diffusion_pytorch_model*.safetensors")) or sorted(folder.glob("diffusion_pytorch_model*.bin"))
            return hashes.file_sha256(files[0]) if files else None
    except OSError:
        return None
    return None


@dataclass
class RunConcepts:
    """Everything the run's jobs add to the model: loaded once when the model loads."""

    loras: list = field(default_factory=list)  # every LoRA file named (first mention)
    embeddings: list = field(default_factory=list)
    vaes: list = field(default_factory=list)  # per-row VAEs other than the run's own

    @property
    def empty(self) -> bool:
        return not (self.loras or self.embeddings or self.vaes)


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(";")) if v]
    return [str(v) for v in value]


def attach(cfg: RunConfig, rows: list, source) -> RunConcepts:
    """Resolve and check every LoRA, embedding and VAE the rows name (before the model loads) and set each
    row's ``concepts``."""
    from . import adapters, embeddings
    from .modelfacts import LazyFacts
    from .prompt_syntax import lora_tags

    facts = LazyFacts(source)
    loras = adapters.LoraChecker(facts, cfg.lora_dir, cfg.allow_unsafe_pickle)
    embeds = embeddings.EmbeddingChecker(facts, cfg.allow_unsafe_pickle)
    run = RunConcepts()
    base = Path(cfg.from_file).parent if cfg.from_file else Path(".")
    texts = [t for r in rows for t in (r.prompt, r.overrides.get("negative_prompt", cfg.negative_prompt))]
    for spec in cfg.embedding:
        run.embeddings.append(embeds.ref(spec, "--embedding"))
    run.embeddings += embeds.from_dir(cfg.embedding_dir, texts)
    sets = set()
    for row in rows:
        o = row.overrides
        where = row.source if "lora" in o else "--lora"
        refs = [loras.ref(path, weight, where) for path, weight in
                (adapters.parse_spec(_near(base, s) if "lora" in o else s, where)
                 for s in (_listed(o["lora"]) if "lora" in o else cfg.lora))]
        try:
            tags = lora_tags(row.prompt)
        except ValueError as e:
            raise UsageError(f"{row.source}: {e}") from None
        refs += [loras.by_name(name, weight, row.source) for name, weight in tags]
        for spec in _listed(o.get("embedding")):
            ref = embeds.ref(_near(base, spec), f"{row.source}: embedding")
            if ref not in run.embeddings:
                run.embeddings.append(ref)
        vae = _near(base, o["vae"]) if "vae" in o else cfg.vae
        if vae != cfg.vae:
            check_vae(dataclasses.replace(cfg, vae=vae))
            if vae not in run.vaes:
                run.vaes.append(vae)
        clip_skip = o.get("clip_skip", cfg.clip_skip)
        syntax = o.get("prompt_syntax", cfg.prompt_syntax)
        check_clip_skip(clip_skip, syntax, facts, row.source if "clip_skip" in o else "--clip-skip")
        negative = o.get("negative_prompt", cfg.negative_prompt)
        used = tuple(e for e in run.embeddings if e.used_in(row.prompt, negative))
        row.concepts = Concepts(tuple(refs), used, vae, vae_sha256(vae), clip_skip, syntax)
        for ref in refs:
            if ref.path not in {r.path for r in run.loras}:
                run.loras.append(ref)
        sets.add(tuple((r.path, r.weight) for r in refs))
    if cfg.fuse_lora and not run.loras:
        raise UsageError("--fuse-lora: no LoRA to fuse; give --lora PATH (or <lora:NAME> tags with --lora-dir)")
    if cfg.fuse_lora and len(sets) > 1:
        raise UsageError("--fuse-lora: the rows use different LoRA sets or weights; fusing bakes one set into the "
                         "model for the whole run: leave --fuse-lora out (switching adapters is cheap) or split the run")
    return run


def _near(base: Path, spec: str) -> str:
    """A prompt-file row's relative path is relative to the prompt file's folder (where it exists there)."""
    if base == Path("."):
        return spec
    head = spec.rsplit(":", 1)[0]
    for candidate in (spec, head):
        path = Path(candidate).expanduser()
        if not path.is_absolute() and (base / path).exists():
            return str(base / spec)
    return spec


def check_clip_skip(clip_skip: int, syntax: str, facts, where: str) -> None:
    if facts.text_layers and clip_skip > facts.text_layers:
        raise UsageError(f"{where} {clip_skip}: the model's text encoder has {facts.text_layers} layers; give 1 "
                         f"to {facts.text_layers}")
    if syntax == "compel" and clip_skip > 2:
        raise UsageError(f"{where} {clip_skip}: with --prompt-syntax compel only 1 or 2 (compel's penultimate "
                         "layer); use --prompt-syntax a1111 for more")
