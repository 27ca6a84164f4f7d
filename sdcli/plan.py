"""A run's plan: every check that needs no model, and the jobs it will make. ``--dry-run`` prints it.

Nothing here loads a model: bad input fails in a fraction of a second. (``--model tiny`` only names the
cached tiny model's folder; it is built when the run loads it.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import outputs, prompts, tasks
from .config import RunConfig
from .errors import UsageError
from .models import Source, resolve_source


@dataclass
class Plan:
    cfg: RunConfig
    task: tasks.Task
    jobs: list[prompts.Job]
    batches: list[list[prompts.Job]]
    outdir: Path
    source: Source

    def dry_run(self) -> list[dict[str, Any]]:
        """One line per job, as ``--dry-run`` prints them."""
        return [{"index": j.index, "prompt": j.prompt, "seed": j.seed, "steps": j.steps, "scale": j.scale,
                 "W": j.W, "H": j.H, "scheduler": j.scheduler, **({"error": j.error} if j.error else {})}
                for j in self.jobs]


def plan(cfg: RunConfig) -> Plan:
    """Everything that can be checked before the model loads: prompts, inputs, outdir, model source."""
    task = tasks.get(cfg.task)
    task.check(cfg)
    rows = task.expand_rows(cfg, prompts.rows_for(cfg, task.row_keys))
    source = resolve_source(cfg.model or task.default_model, cfg, cfg.task)
    jobs = prompts.make_jobs(cfg, rows, source.name, task.name)
    batches = prompts.batches(jobs, cfg.n_samples)
    if cfg.output is not None:
        if len(jobs) != 1:
            raise UsageError(f"--output {cfg.output}: writes one image, but this run makes {len(jobs)}; "
                             "use --n_samples 1 --n_iter 1 and one input, or --outdir")
        if Path(cfg.output).suffix.lower() not in outputs.FORMATS:
            raise UsageError(f"--output {cfg.output}: unknown image type; end it in .png, .jpg or .webp")
        outdir = outputs.prepare_outdir(str(Path(cfg.output).parent), need_samples=False)
    else:
        outdir = outputs.prepare_outdir(cfg.outdir or task.outdir, need_samples=not cfg.skip_save)
    return Plan(cfg, task, jobs, batches, outdir, source)
