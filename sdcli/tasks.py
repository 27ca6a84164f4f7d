"""Per task: its pipeline class, default model and outdir, extra inputs, and the pipeline call arguments.

Everything else (config, prompts, seeds, device, schedulers, safety checker, watermark, outputs) is
shared by all tasks in ``runner.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class Task:
    name: str
    pipeline_class: str
    default_model: str
    outdir: str
    row_keys: frozenset = field(default_factory=frozenset)  # extra per-row keys in prompt files

    def inputs(self, cfg) -> dict[str, Any]:
        """Task inputs common to every job, from the config, validated before the model loads."""
        return {}

    def call_kwargs(self, jobs, width: int, height: int) -> dict[str, Any]:
        """Task-specific pipeline arguments for one batch of jobs (all with equal settings)."""
        return {"height": height, "width": width}

    def record(self, job) -> dict[str, Any]:
        """Task-specific fields for metadata and manifest."""
        return {}

    def a1111(self, job) -> dict[str, Any]:
        """Task-specific A1111 ``parameters`` entries."""
        return {}


TASKS: dict[str, Task] = {
    "txt2img": Task("txt2img", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                    "outputs/txt2img-samples"),
}


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"unknown task {name!r}; one of {', '.join(TASKS)}") from None
