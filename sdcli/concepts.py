"""What a run adds to or checks against the model's own parts: a VAE of the user's (``--vae``, the
instruct-pix2pix ``--vae-ckpt``) and the latent geometry the original scripts state (``--C``, ``--f``).

``check_vae`` runs in the plan (no model); ``load_vae`` and ``check_geometry`` with the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
