"""The one table of numeric limits, used for flags and configs (``config.validate``), prompt-file rows
(``prompts``) and sizes derived from input images (``tasks``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import UsageError

MAX_SEED = 2**63 - 1
MAX_JOBS = 100_000  # images in one run: the jobs are built in memory before the first image


@dataclass(frozen=True)
class Limit:
    lo: float
    hi: float
    kind: type = int  # int or float
    multiple: int = 1  # sizes: a multiple of 8
    flag: Optional[str] = None  # the flag's spelling in messages, if not --KEY

    def flag_for(self, key: str) -> str:
        return self.flag or f"--{key}"


LIMITS: dict[str, Limit] = {
    "steps": Limit(1, 1000),
    "scale": Limit(0, 100, float),
    "H": Limit(8, 4096, multiple=8),
    "W": Limit(8, 4096, multiple=8),
    "n_samples": Limit(1, 64),
    "n_iter": Limit(1, 100000),
    "n_rows": Limit(0, 1000),
    "repeat": Limit(1, 10000),
    "seed": Limit(0, MAX_SEED),
    "eta": Limit(0, 1, float),
    "strength": Limit(0, 1, float),
    "image_guidance_scale": Limit(1, 100, float, flag="--image-guidance-scale"),
    "resolution": Limit(64, 4096),
    "mask_blur": Limit(0, 256, flag="--mask-blur"),
    "latent_channels": Limit(1, 64, flag="--C"),
    "downsampling_factor": Limit(1, 64, flag="--f"),
    "quality": Limit(1, 100),  # --format jpg/webp
    "clip_skip": Limit(1, 48, flag="--clip-skip"),
}
MAX_SIDE = int(LIMITS["W"].hi)
MAX_BATCH = int(LIMITS["n_samples"].hi)


def problem(key: str, value: Any) -> Optional[str]:
    """What is wrong with a number for ``key`` (``must be ...``), or None. ``value`` is already a number."""
    limit = LIMITS[key]
    if not limit.lo <= value <= limit.hi:
        return f"must be between {_num(limit.lo)} and {_num(limit.hi)}" + (" pixels" if limit.multiple > 1 else "")
    if limit.multiple > 1 and value % limit.multiple:
        return f"must be a multiple of {limit.multiple} (e.g. {max(limit.multiple, int(value) // limit.multiple * limit.multiple)})"
    return None


def check(key: str, value: Any) -> None:
    """A flag or config value: ``--KEY VALUE: must be ...``. None (unset) passes."""
    if value is None:
        return
    message = problem(key, value)
    if message:
        raise UsageError(f"{LIMITS[key].flag_for(key)} {value}: {message}")


def parse(key: str, value: Any, where: str) -> Any:
    """A value from a prompt-file row (a number, or text holding one) -> the checked number."""
    kind = LIMITS[key].kind
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{where}: '{key}' must be a number, got {value!r}")
    try:
        number = kind(value)
        if kind is int and float(value) != number:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{where}: '{key}' must be {what}, got {value!r}") from None
    message = problem(key, number)
    if message:
        raise UsageError(f"{where}: {key} {number}: {message}")
    return number


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
