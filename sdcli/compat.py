"""The original scripts' flags that are not plain spellings of an sdcli option: one table saying what each
means in sdcli (a switch standing for config values, a valued flag naming a config key, or a refusal that
says why and what to use instead). Plain aliases (``--ddim_steps``, ``--n_samples``, ``--init-img``, ...)
are spellings in cli.py's option table; README "The original scripts' flags" lists them all.

Pure data and a translation to config keys: no Typer here (cli.py builds the options from ``FLAGS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from . import config, schedulers
from .errors import UsageError


@dataclass(frozen=True)
class OriginalFlag:
    name: str  # parameter name; for a valued flag the config key it sets
    spellings: tuple  # the original's spelling first, then sdcli's
    kind: type  # bool: a switch; else the type of its value
    help: str
    sets: dict = field(default_factory=dict)  # a switch: the config values it stands for
    refuse: Optional[str] = None  # a refused switch: why, and what to use instead


FLAGS: tuple = (
    OriginalFlag("plms", ("--plms",), bool, "Same as --scheduler pndm (PLMS).", {"scheduler": "pndm"}),
    OriginalFlag("dpm", ("--dpm",), bool, "Same as --scheduler dpm++2m (Stability-AI txt2img.py's DPM-Solver++ "
                 "2M sampler).", {"scheduler": "dpm++2m"}),
    OriginalFlag("dpm_solver", ("--dpm_solver", "--dpm-solver"), bool, "Same as --scheduler dpm++2m (CompVis "
                 "txt2img.py's DPM-Solver sampler: multistep, order 2, data prediction = DPM-Solver++ 2M).",
                 {"scheduler": "dpm++2m"}),
    OriginalFlag("bf16", ("--bf16",), bool, "Same as --precision bf16.", {"precision": "bf16"}),
    OriginalFlag("latent_channels", ("--C", "--latent-channels"), int, "Latent channels: checked against the "
                 "model once loaded [the model's; 4 for Stable Diffusion]."),
    OriginalFlag("downsampling_factor", ("--f", "--downsampling-factor"), int, "VAE downsampling factor: checked "
                 "against the model once loaded [the model's; 8 for Stable Diffusion]."),
    OriginalFlag("vae", ("--vae", "--vae-ckpt", "--vae_ckpt"), str, "A VAE to use instead of the model's: a "
                 "diffusers folder, a .safetensors file, or a hub id (edit_cli.py's --vae-ckpt) [the model's]."),
    OriginalFlag("laion400m", ("--laion400m",), bool, "Not supported (CompVis's LAION-400M model is not a Stable "
                 "Diffusion model).", refuse="CompVis txt2img.py's LAION-400M model (LDM text2img-large) is a "
                 "latent diffusion model, not Stable Diffusion, and sdcli does not run it; give a Stable Diffusion "
                 "model with --model (or --ckpt)"),
    OriginalFlag("torchscript", ("--torchscript",), bool, "Not supported; use --compile.", refuse="sdcli does not "
                 "trace the model with TorchScript; use --compile (torch.compile of the UNet) for a faster UNet"),
    OriginalFlag("ipex", ("--ipex",), bool, "Not supported; use --precision bf16 and --compile.", refuse="sdcli "
                 "does not use Intel Extension for PyTorch; on a CPU use --precision bf16 (on CPUs with bf16 "
                 "instructions) and --compile, which plain PyTorch provides"),
)
BY_NAME = {f.name: f for f in FLAGS}


def _normal(key: str, value: Any) -> Any:
    text = str(value).lower()
    if key == "precision":
        return config.PRECISIONS.get(text, text)
    if key == "scheduler":
        return schedulers.ALIASES.get(text, text)
    return value


def to_config(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line values (None: not given) -> config flags: switches become the values they stand for,
    valued flags their config key; a refused switch, or one that contradicts another flag, is a UsageError."""
    flags = {k: v for k, v in values.items() if k not in BY_NAME and v is not None}
    set_by: dict[str, str] = {}
    for f in FLAGS:
        value = values.get(f.name)
        if value is None or value is False:
            continue
        spelling = f.spellings[0]
        if f.refuse:
            raise UsageError(f"{spelling}: {f.refuse}")
        if f.kind is not bool:
            flags[f.name] = value
            continue
        for key, target in f.sets.items():
            given = flags.get(key)
            if given is not None and _normal(key, given) not in (target, "auto"):
                other = set_by.get(key, f"--{key} {given}")
                raise UsageError(f"{spelling} and {other}: they contradict each other; give one of them")
            flags[key], set_by[key] = target, spelling
    return flags
