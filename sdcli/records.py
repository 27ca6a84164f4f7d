"""What sdcli records about an image: the JSON record (PNG ``sdcli`` chunk, manifest line), the
AUTOMATIC1111 ``parameters`` text, failure records and manifest lines. Pure: no files, no torch."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from . import __version__, schedulers
from .errors import textsafe
from .prompts import Job


@dataclass(frozen=True)
class RunFacts:
    """What every record of a run shares."""

    task: str
    model: str  # what metadata calls the model
    model_source: str  # the hub id, or the kind of source (folder, single_file)
    device: str = ""
    precision: str = ""
    model_sha256: Optional[str] = None  # of the weights file (a folder's UNet weights); see hashes.py
    precision_auto: str = ""  # why --precision auto picked ``precision`` ("" when the user set it)
    backend: str = ""  # what ran the UNet and the VAE: torch or openvino (backends.py)

    @classmethod
    def of(cls, task: str, source, device: str = "", precision: str = "", precision_auto: str = "") -> "RunFacts":
        """From a ``models.Source``: a hub model is recorded by its id, local ones by the kind of source."""
        return cls(task, source.name, source.location if source.kind == "hub" else source.kind, device, precision,
                   precision_auto=precision_auto)

    def base(self) -> dict[str, Any]:
        return {"sdcli_version": __version__, "task": self.task}


def image_record(facts: RunFacts, job: Job, batch, nsfw: bool, watermark: Optional[str]) -> dict[str, Any]:
    """The full settings record of one image of ``batch`` (a pipeline.BatchResult): the PNG ``sdcli`` chunk
    and the manifest line."""
    return textsafe({
        **facts.base(),
        "job_id": job.id,
        "index": job.index,
        "iteration": job.iteration,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": job.steps,
        "denoising_steps": batch.steps_run,
        "scale": job.scale,
        "width": batch.width,
        "height": batch.height,
        "scheduler": job.scheduler,
        "eta": job.eta,
        "batch_size": len(batch.images),
        "model": facts.model,
        "model_source": facts.model_source,
        "model_sha256": facts.model_sha256,
        "device": facts.device,
        "precision": facts.precision,
        "precision_auto": facts.precision_auto or None,
        "backend": facts.backend,
        "nsfw": nsfw,
        "watermark": watermark,
        "truncated": job.prompt in batch.truncated or job.negative_prompt in batch.truncated,
        **(job.inputs.record() if job.inputs is not None else {}),
        **(job.concepts.record() if job.concepts is not None else {}),
    })


def failure_record(facts: RunFacts, job: Job, error: str) -> dict[str, Any]:
    return textsafe({**facts.base(), "job_id": job.id, "index": job.index, "prompt": job.prompt, "seed": job.seed,
                     "source": job.source, "error": error})


def manifest_line(record: dict[str, Any], path: str, sha256: str, **extra: Any) -> dict[str, Any]:
    """An image's manifest line: its record, where it is, its sha256, status ok (and extra fields)."""
    return {**record, "path": path, "sha256": sha256, "status": "ok", **extra}


# --- AUTOMATIC1111 `parameters` ----------------------------------------------------------------------

def short_hash(sha256: Optional[str]) -> Optional[str]:
    """A1111's ``Model hash``: the first 10 hex digits of the weights file's sha256."""
    return sha256[:10] if sha256 else None


def a1111_for(record: dict[str, Any], job: Job) -> str:
    """The ``parameters`` text of an image, from its record (a grid's: from its first image's). DDIM's eta
    is A1111's ``Eta DDIM`` (its ``Eta`` is the ancestral samplers' eta)."""
    params = {
        "Steps": record["steps"], "Sampler": schedulers.a1111_name(job.scheduler), "CFG scale": record["scale"],
        "Seed": record["seed"], "Size": f"{record['width']}x{record['height']}",
        "Model hash": short_hash(record.get("model_sha256")), "Model": record["model"],
        "Eta DDIM": record["eta"] if job.scheduler == "ddim" and record["eta"] else None,
        **textsafe(job.inputs.a1111() if job.inputs is not None else {}),
        **textsafe(job.concepts.a1111(record.get("model_sha256")) if job.concepts is not None else {}),
        "Version": f"sdcli {__version__}",
    }
    return a1111_parameters(record["prompt"], record["negative_prompt"], params)


def _quote(value: Any) -> str:
    """A1111's quoting: a value with , : newline or " becomes a JSON string; a JSON object (Civitai's
    ``Hashes``) is written as it is, as A1111 writes it."""
    text = str(value)
    if text.startswith("{") and text.endswith("}") and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n"') else text


def a1111_parameters(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text: prompt, optional negative prompt, then one ``key: value`` line."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def parse_a1111(text: str) -> dict[str, str]:
    """Parse a ``parameters`` text the way A1111's PNG Info does (the last line holds the settings)."""
    *head, last = text.strip().split("\n")
    pairs = re.findall(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|\{[^}]*\}|[^,]*)(?:,|$)', last)
    if len(pairs) < 3:
        return {"prompt": text}
    out = {k.strip(): (json.loads(v) if v.startswith('"') else v) for k, v in pairs}
    prompt, negative, in_negative = [], [], False
    for line in head:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out["prompt"] = "\n".join(prompt)
    out["Negative prompt"] = "\n".join(negative)
    return out
