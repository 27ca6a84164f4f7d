"""Schedulers: one table of names, aliases, A1111 sampler names and how to build each from a model's config.

``model`` keeps the scheduler the model was saved with. Nothing here imports diffusers until ``make``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UsageError, suggest

MODEL = "model"  # keep the model's own scheduler


@dataclass(frozen=True)
class Scheduler:
    cls: str  # diffusers class name
    a1111: str  # AUTOMATIC1111's sampler name (the `Sampler:` field)
    extra: dict = field(default_factory=dict)  # from_config keyword arguments
    eta: bool = False  # its step() takes eta (diffusers passes --eta only then; all others ignore it)
    steps: int = 50  # the step count it is recommended at (the demo benchmark and tests check it there)


TABLE: dict[str, Scheduler] = {
    "ddim": Scheduler("DDIMScheduler", "DDIM", eta=True, steps=50),
    "pndm": Scheduler("PNDMScheduler", "PLMS", {"skip_prk_steps": True}, steps=50),
    "lms": Scheduler("LMSDiscreteScheduler", "LMS", steps=50),
    "euler": Scheduler("EulerDiscreteScheduler", "Euler", steps=30),
    "euler-a": Scheduler("EulerAncestralDiscreteScheduler", "Euler a", steps=30),
    "heun": Scheduler("HeunDiscreteScheduler", "Heun", steps=25),
    "dpm2": Scheduler("KDPM2DiscreteScheduler", "DPM2", steps=25),
    "dpm2-a": Scheduler("KDPM2AncestralDiscreteScheduler", "DPM2 a", steps=30),
    "dpm++2m": Scheduler("DPMSolverMultistepScheduler", "DPM++ 2M", steps=20),
    "dpm++2m-karras": Scheduler("DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}, steps=20),
    "dpm++sde": Scheduler("DPMSolverSinglestepScheduler", "DPM++ SDE", steps=20),
    "unipc": Scheduler("UniPCMultistepScheduler", "UniPC", steps=20),
    "ddpm": Scheduler("DDPMScheduler", "DDPM", steps=100),
    "deis": Scheduler("DEISMultistepScheduler", "DEIS", steps=20),
}
ALIASES = {"plms": "pndm", "euler_a": "euler-a", "euler-ancestral": "euler-a", "dpmpp2m": "dpm++2m",
           "dpm++2m_karras": "dpm++2m-karras", "dpm": "dpm++2m"}
NAMES = (MODEL, *TABLE)  # canonical names, as --help lists them
CHOICES = (*NAMES, *ALIASES)  # every spelling accepted


def canonical(name: str, where: str) -> str:
    """The canonical name of ``name`` (any case, any alias); a UsageError starting with ``where`` if unknown."""
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise UsageError(f"{where}: unknown scheduler{suggest(key, CHOICES)}; choose one of: {', '.join(NAMES)}")
    return key


def eta_used(name: str, eta: float) -> Optional[float]:
    """The eta a job with scheduler ``name`` really uses: ``eta`` where the scheduler takes it, None where it
    ignores it. ``model`` (the model's own scheduler) is only known once loaded: ``eta`` is kept until then."""
    return eta if name == MODEL or TABLE[name].eta else None


def a1111_name(name: str) -> str:
    return TABLE[name].a1111 if name in TABLE else "Model default"


def make(name: str, base_config: Any):
    """The scheduler ``name`` (canonical, not ``model``), built from the model's own scheduler config.

    Options the model's config does not state keep the model's intent: clip_sample stays off (the SD
    releases ship a PNDM config without it, and DDIM would turn it on).
    """
    import diffusers

    entry = TABLE[name]
    config = dict(base_config)
    kwargs = {"clip_sample": config.get("clip_sample", False), **entry.extra}
    return getattr(diffusers, entry.cls).from_config(config, **kwargs)


def takes_eta(scheduler: Any) -> bool:
    """Does a loaded scheduler use eta (the ``model`` case of ``eta_used``)?"""
    import inspect

    return "eta" in inspect.signature(scheduler.step).parameters
