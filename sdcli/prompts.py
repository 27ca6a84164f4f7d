"""Prompts and prompt files -> jobs (one job = one image), and jobs -> batches.

Counting follows the original scripts: with ``--prompt`` every batch is ``n_samples`` images of that
prompt, ``n_iter`` times; with ``--from-file`` the rows (each repeated ``repeat`` times) are taken
``n_samples`` at a time, one image per row, and ``n_iter`` repeats the whole list.

Seeds: image k of the run (k counts from 0 over the whole run) uses ``seed + k``; with ``fixed_code``
image i of each iteration uses ``seed + i % n_samples`` (one starting noise for every batch). A row with its own
``seed`` uses it for its first image and ``seed + j`` for its j-th repetition.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import limits, schedulers, textfiles
from .config import ROW_ALIASES, ROW_KEYS, RunConfig
from .errors import UsageError, suggest
from .files import read_user_file

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"  # the CompVis txt2img default
MAX_PROMPT_FILE = 64 * 1024 * 1024


@dataclass
class Row:
    """One prompt with its per-row overrides (keys of config.ROW_KEYS, plus raw task input fields)."""

    prompt: str
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line" for messages
    error: Optional[str] = None  # a per-row input problem: the row's jobs fail, the others run
    inputs: Any = None  # the task's checked inputs (tasks.TaskInputs), set by Task.expand_rows
    concepts: Any = None  # its LoRAs, embeddings, VAE, clip skip, prompt syntax (concepts.Concepts), set by plan


def denoising_steps(steps: int, strength: Optional[float]) -> int:
    """The steps an image task really runs: ``steps x strength`` (diffusers' rule), else ``steps``."""
    return steps if strength is None else int(steps * strength)


@dataclass
class Job:
    index: int  # k: position of the image in the run
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    scale: float
    W: Optional[int]
    H: Optional[int]
    scheduler: str
    eta: Optional[float]  # None: the scheduler ignores eta (schedulers.eta_used)
    iteration: int
    inputs: Any = None  # the task's inputs (tasks.TaskInputs: frozen, hashable), None for txt2img
    concepts: Any = None  # concepts.Concepts (frozen, hashable); None: a plain run
    source: str = ""
    error: Optional[str] = None
    id: str = ""  # stable identity (see job_id), set by make_jobs

    @property
    def strength(self) -> Optional[float]:
        return getattr(self.inputs, "strength", None)

    @property
    def denoising_steps(self) -> int:
        return denoising_steps(self.steps, self.strength)

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call."""
        return (self.steps, self.scale, self.W, self.H, self.scheduler, self.eta, self.iteration, self.inputs,
                self.concepts.batch_key() if self.concepts is not None else None)

    def settings(self) -> dict[str, Any]:
        """What makes the image: every setting, task inputs as a flat mapping."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("source", "error", "id", "inputs", "concepts")}
        out["inputs"] = self.inputs.fields() if self.inputs is not None else {}
        out.update(self.concepts.fields() if self.concepts is not None else {})  # nothing for a plain run
        return out

    def job_id(self, model: str, task: str) -> str:
        """Stable identity: a hash of what makes the image, including its index in the run (--resume's key).
        ``make_jobs`` computes it once, as ``id``."""
        data = json.dumps({"task": task, "model": model, **self.settings()}, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def _check_row_value(key: str, value: Any, where: str) -> Any:
    if key in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            raise UsageError(f"{where}: '{key}' must be text, got {value!r}")
        return value
    if key in limits.LIMITS:
        return limits.parse(key, value, where)
    if key == "scheduler":
        return schedulers.canonical(value, f"{where}: scheduler {value!r}")
    if key == "prompt_syntax":
        from .prompt_syntax import SYNTAXES

        if value not in SYNTAXES:
            raise UsageError(f"{where}: prompt_syntax {value!r}: choose {', '.join(SYNTAXES)}")
    if key in ("lora", "embedding") and not (isinstance(value, str) or isinstance(value, list)
                                            and all(isinstance(v, str) for v in value)):
        raise UsageError(f"{where}: '{key}' must be a file (PATH or PATH:{'WEIGHT' if key == 'lora' else 'TOKEN'}) "
                         "or a list of them")
    if key == "vae" and not isinstance(value, str):
        raise UsageError(f"{where}: 'vae' must be a VAE file, folder or hub id")
    return value


def row_from_mapping(data: dict, where: str, extra_keys: frozenset = frozenset()) -> Row:
    allowed = ROW_KEYS | extra_keys
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = ROW_ALIASES.get(key, key)
        if key not in allowed:
            raise UsageError(f"{where}: unknown key '{key}'{suggest(str(key), allowed)}; allowed: {', '.join(sorted(allowed))}")
        if value is None:
            continue
        out[key] = _check_row_value(key, value, where)
    prompt = out.pop("prompt", None)
    if prompt is None or not prompt.strip():
        raise UsageError(f"{where}: row has no 'prompt'; every row needs one")
    return Row(prompt=prompt, overrides=out, source=where)


def read_prompt_file(path: str, extra_keys: frozenset = frozenset()) -> list[Row]:
    """Parse a .txt/.jsonl/.yaml/.csv prompt file into rows. Errors name the file and line."""
    p = Path(path)
    name = f"--from-file {path}"
    raw = read_user_file(path, name, "a .txt, .jsonl, .yaml or .csv prompt file", MAX_PROMPT_FILE, allow_empty=True)
    text = textfiles.decode(raw, name)
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(text, path, extra_keys)
    elif suffix in (".yaml", ".yml"):
        rows = _yaml_rows(text, path, extra_keys)
    elif suffix == ".csv":
        rows = _csv_rows(text, path, extra_keys)
    else:
        rows = [Row(prompt=line.strip(), source=f"{path}:{i}")
                for i, line in enumerate(textfiles.lines(text), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise UsageError(f"{name}: no prompts in it (blank lines and # comments are skipped)")
    return rows


def _jsonl_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    rows = []
    for i, line in enumerate(textfiles.lines(text), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{i}"
        rows.append(_row(textfiles.load_json(line, where), where, extra_keys))
    return rows


def _yaml_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    data = textfiles.load_yaml(text, path)
    if data is None:
        return []
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of prompts (strings or mappings with a 'prompt' key)")
    return [_row(item, f"{path}: item {i}", extra_keys) for i, item in enumerate(data, 1)]


def _csv_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    csv.field_size_limit(MAX_PROMPT_FILE)  # the csv module's own limit (128 KiB a field) is not ours to impose
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    try:
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise UsageError(f"{path}: the first line must be a header naming the columns, with a 'prompt' column")
        for record in reader:
            i = reader.line_num
            if None in record:
                raise UsageError(f"{path}:{i}: more fields than header columns; quote values that contain commas")
            rows.append(row_from_mapping({k: (v if v != "" else None) for k, v in record.items()}, f"{path}:{i}",
                                         extra_keys))
    except csv.Error as e:
        raise UsageError(f"{path}:{reader.line_num}: invalid CSV ({e}); fix the quoting") from None
    return rows


def _row(item: Any, where: str, extra_keys: frozenset) -> Row:
    if isinstance(item, str):
        if not item.strip():
            raise UsageError(f"{where}: empty prompt")
        return Row(prompt=item, source=where)
    if isinstance(item, dict):
        return row_from_mapping(item, where, extra_keys)
    raise UsageError(f"{where}: expected a prompt string or a mapping with a 'prompt' key, got {type(item).__name__}")


def rows_for(cfg: RunConfig, extra_keys: frozenset = frozenset()) -> list[Row]:
    if cfg.from_file is not None:
        return read_prompt_file(cfg.from_file, extra_keys)
    prompt = cfg.prompt if cfg.prompt is not None else DEFAULT_PROMPT
    if not prompt.strip():
        raise UsageError("--prompt: empty; give the text to generate from")
    return [Row(prompt=prompt, source="--prompt")]


def make_jobs(cfg: RunConfig, rows: list[Row], model: str, task: str) -> list[Job]:
    """Expand rows into one job per image, in generation order, with their seeds and ids (``cfg.seed`` set:
    ``plan`` picks the random one)."""
    each, flag = (cfg.n_samples, "--n_samples") if cfg.from_file is None else (cfg.repeat, "--repeat")
    total = len(rows) * each * cfg.n_iter
    if total > limits.MAX_JOBS:
        raise UsageError(f"{flag} {each} x --n_iter {cfg.n_iter} x {len(rows)} prompt(s) = {total} images: more than "
                         f"{limits.MAX_JOBS} in one run; split the work into several runs")
    per_iter = [(row, j) for row in rows for j in range(each)]
    jobs: list[Job] = []
    for it in range(cfg.n_iter):
        for pos, (row, rep) in enumerate(per_iter):
            k = len(jobs)
            o = row.overrides
            if "seed" in o:
                seed = o["seed"] + rep + it * cfg.repeat
            elif cfg.fixed_code:
                seed = cfg.seed + pos % cfg.n_samples
            else:
                seed = cfg.seed + k
            if seed > limits.MAX_SEED:  # every recorded seed must be one --seed accepts, to regenerate the image
                where = f"{row.source}: seed {o['seed']}" if "seed" in o else f"--seed {cfg.seed}"
                raise UsageError(f"{where}: image {k + 1} of this run would need seed {seed}, above the largest "
                                 f"({limits.MAX_SEED}); use a smaller seed")
            job = Job(
                index=k, prompt=row.prompt, negative_prompt=o.get("negative_prompt", cfg.negative_prompt),
                seed=seed, steps=o.get("steps", cfg.steps), scale=o.get("scale", cfg.scale),
                W=o.get("W", cfg.W), H=o.get("H", cfg.H), scheduler=o.get("scheduler", cfg.scheduler),
                eta=schedulers.eta_used(o.get("scheduler", cfg.scheduler), o.get("eta", cfg.eta)), iteration=it, inputs=row.inputs, concepts=row.concepts, source=row.source, error=row.error,
            )
            job.id = job.job_id(model, task)
            jobs.append(job)
    return jobs


def ignored_eta(cfg: RunConfig, rows: list[Row]) -> Optional[str]:
    """A warning when an eta was asked for with schedulers that ignore it (its jobs record eta null)."""
    ignored = sorted({r.overrides.get("scheduler", cfg.scheduler) for r in rows if r.overrides.get("eta", cfg.eta)
                      and schedulers.eta_used(r.overrides.get("scheduler", cfg.scheduler), 1.0) is None})
    if not ignored:
        return None
    takes = ", ".join(n for n, s in schedulers.TABLE.items() if s.eta)
    return (f"--eta: the {', '.join(ignored)} scheduler ignores eta (only {takes} uses it); its images record eta "
            "null. Use --scheduler ddim for eta, or leave --eta out")


def batches(jobs: list[Job], n_samples: int) -> list[list[Job]]:
    """Consecutive jobs, at most n_samples per batch, split where settings differ (failed jobs left out)."""
    out: list[list[Job]] = []
    for job in jobs:
        if job.error is not None:
            continue
        if out and len(out[-1]) < n_samples and out[-1][0].batch_key() == job.batch_key():
            out[-1].append(job)
        else:
            out.append([job])
    return out
