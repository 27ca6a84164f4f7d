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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import ROW_ALIASES, ROW_KEYS, SCHEDULER_ALIASES, SCHEDULERS, RunConfig, check_size, suggest
from .errors import UsageError
from .files import read_user_file

DEFAULT_PROMPT = "a painting of a virus monster playing guitar"  # the CompVis txt2img default
MAX_PROMPT_FILE = 64 * 1024 * 1024


@dataclass
class Row:
    """One prompt with its per-row overrides (keys of config.ROW_KEYS, plus task inputs)."""

    prompt: str
    overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line" for messages
    error: Optional[str] = None  # a per-row input problem: the row's jobs fail, the others run


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
    eta: float
    iteration: int
    inputs: dict[str, Any] = field(default_factory=dict)  # task inputs (init image, mask, strength...)
    source: str = ""
    error: Optional[str] = None

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call."""
        inputs = tuple(sorted(self.inputs.items()))
        return (self.steps, self.scale, self.W, self.H, self.scheduler, self.eta, self.iteration, inputs)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("source", "error")}

    def job_id(self, model: str, task: str) -> str:
        """Stable identity: a hash of what makes the image, including its index in the run."""
        data = json.dumps({"task": task, "model": model, **self.settings()}, sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def _check_row_value(key: str, value: Any, where: str) -> Any:
    def num(kind, lo, hi):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"{where}: '{key}' must be a number, got {value!r}")
        try:
            v = kind(value)
            if kind is int and float(value) != v:
                raise ValueError
        except (TypeError, ValueError):
            raise UsageError(f"{where}: '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
        if not lo <= v <= hi:
            raise UsageError(f"{where}: '{key}' {v} must be between {lo} and {hi}")
        return v

    if key in ("prompt", "negative_prompt"):
        if not isinstance(value, str):
            raise UsageError(f"{where}: '{key}' must be text, got {value!r}")
        return value
    if key == "seed":
        return num(int, 0, 2**63 - 1)
    if key == "steps":
        return num(int, 1, 1000)
    if key in ("scale",):
        return num(float, 0, 100)
    if key in ("eta", "strength"):
        return num(float, 0, 1)
    if key == "image_guidance_scale":
        return num(float, 1, 100)
    if key in ("W", "H"):
        v = num(int, 8, 4096)
        try:
            check_size(key, v)
        except UsageError as e:
            raise UsageError(f"{where}: {str(e).lstrip('-')}") from None
        return v
    if key == "scheduler":
        name = SCHEDULER_ALIASES.get(str(value).lower(), str(value).lower())
        if name not in SCHEDULERS and name != "model":
            raise UsageError(f"{where}: unknown scheduler {value!r}{suggest(name, SCHEDULERS)}")
        return name
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
    if b"\0" in raw:
        raise UsageError(f"{name}: binary data (NUL bytes); give a text prompt file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UsageError(f"{name}: not UTF-8 (line {line}); save the file as UTF-8") from None
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(text, path, extra_keys)
    elif suffix in (".yaml", ".yml"):
        rows = _yaml_rows(text, path, extra_keys)
    elif suffix == ".csv":
        rows = _csv_rows(text, path, extra_keys)
    else:
        rows = [Row(prompt=line.strip(), source=f"{path}:{i}")
                for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise UsageError(f"{name}: no prompts in it (blank lines and # comments are skipped)")
    return rows


def _jsonl_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    rows = []
    # Not str.splitlines(): JSON strings may hold U+2028/U+2029/U+0085 unescaped.
    for i, line in enumerate(re.split(r"\r\n|[\r\n]", text), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{i}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: invalid JSON ({e.msg}); one JSON object per line") from None
        rows.append(_row(data, where, extra_keys))
    return rows


def _yaml_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UsageError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML; fix the syntax") from None
    if data is None:
        return []
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of prompts (strings or mappings with a 'prompt' key)")
    return [_row(item, f"{path}: item {i}", extra_keys) for i, item in enumerate(data, 1)]


def _csv_rows(text: str, path: str, extra_keys: frozenset) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise UsageError(f"{path}: the first line must be a header naming the columns, with a 'prompt' column")
    rows = []
    for record in reader:
        i = reader.line_num
        if None in record:
            raise UsageError(f"{path}:{i}: more fields than header columns; quote values that contain commas")
        rows.append(row_from_mapping({k: (v if v != "" else None) for k, v in record.items()}, f"{path}:{i}", extra_keys))
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


def make_jobs(cfg: RunConfig, rows: list[Row], task_inputs: dict[str, Any] | None = None) -> list[Job]:
    """Expand rows into one job per image, in generation order, with their seeds."""
    if cfg.from_file is None:  # one prompt (per input image): n_samples images of it per iteration
        per_iter = [(row, j) for row in rows for j in range(cfg.n_samples)]
    else:
        per_iter = [(row, r) for row in rows for r in range(cfg.repeat)]
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
            inputs = dict(task_inputs or {})
            inputs.update({key: v for key, v in o.items() if key not in ROW_KEYS})
            jobs.append(Job(
                index=k, prompt=row.prompt, negative_prompt=o.get("negative_prompt", cfg.negative_prompt),
                seed=seed, steps=o.get("steps", cfg.steps), scale=o.get("scale", cfg.scale),
                W=o.get("W", cfg.W), H=o.get("H", cfg.H), scheduler=o.get("scheduler", cfg.scheduler),
                eta=o.get("eta", cfg.eta), iteration=it, inputs=inputs, source=row.source, error=row.error,
            ))
    return jobs


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
