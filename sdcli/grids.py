"""Grids: one image of a run's images, written once per job set. A lone process writes its grid from the
images in memory; the shards of a split run write it from the files on disk, when the last one finishes (or
``sdcli grid OUTDIR`` does, from the run lines a split run records in its manifest).

A grid records ``grid_of``: the key of the job set it shows, so no process writes a second one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from . import manifest, outputs
from .errors import SdcliError

GRID_MAX_IMAGES = 256  # a grid holds every image of the run in memory
RUN_STATUS = "run"  # the manifest line of a split run: which jobs its grid shows, and how


def key_of(job_ids: Iterable[str]) -> str:
    """Which job set a grid shows (recorded in the grid, so a resumed or split run knows it is written)."""
    return hashlib.sha256(" ".join(sorted(job_ids)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GridSpec:
    jobs: tuple[str, ...]  # job ids in the order of the grid
    columns: int
    format: str  # png, jpg, webp
    quality: int
    watermark: Optional[str]  # the payload, or None

    @property
    def key(self) -> str:
        return key_of(self.jobs)

    def line(self) -> dict[str, Any]:
        """The manifest line of a split run (``sdcli grid`` reads it)."""
        return {"status": RUN_STATUS, "grid_of": self.key, "jobs": list(self.jobs), "columns": self.columns,
                "format": self.format, "quality": self.quality, "watermark": self.watermark}

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> Optional["GridSpec"]:
        try:
            jobs, columns = line["jobs"], int(line["columns"])
            spec = cls(tuple(jobs), columns, str(line["format"]), int(line["quality"]), line.get("watermark"))
        except (KeyError, TypeError, ValueError):
            return None
        ok = all(isinstance(j, str) for j in jobs) and columns >= 1 and spec.format in ("png", "jpg", "webp")
        return spec if ok and jobs and line.get("grid_of") == spec.key else None


def record_run(outdir: Path, spec: GridSpec) -> None:
    """Add the run line to the manifest, once for every process of a split run."""
    with manifest.manifest_lock(outdir) as fd:
        if not any(r.get("status") == RUN_STATUS and r.get("grid_of") == spec.key for r in manifest.read_manifest(outdir)):
            manifest.write_lines(fd, [spec.line()])


def runs_in(outdir: Path) -> list[GridSpec]:
    """The split runs recorded in an outdir's manifest, first line first, each once."""
    specs: dict[str, GridSpec] = {}
    for line in manifest.read_manifest(outdir):
        if line.get("status") == RUN_STATUS:
            spec = GridSpec.from_line(line)
            if spec is not None:
                specs.setdefault(spec.key, spec)
    return list(specs.values())


def existing(outdir: Path, key: str) -> Optional[str]:
    """The grid file in ``outdir`` that shows job set ``key``, if any."""
    for name in sorted(os.listdir(outdir)):
        if outputs.GRID_RE.match(name):
            try:
                record = json.loads(outputs.read_metadata(str(Path(outdir) / name)).get("sdcli", "{}"))
            except (SdcliError, ValueError):
                continue
            if isinstance(record, dict) and record.get("grid_of") == key:
                return str(Path(outdir) / name)
    return None


def encode(outdir: Path, spec: GridSpec, images: list, first: dict[str, Any], parameters: str) -> Optional[str]:
    """Write the grid of ``images`` (watermarked as the samples are); ``first``: its first image's record, whose
    model it names, ``parameters``: that image's A1111 text. None when the images differ in size."""
    from .postprocess import apply_watermark, can_watermark

    if len({im.size for im in images}) > 1:
        return None
    grid = outputs.make_grid(images, spec.columns)
    mark = spec.watermark if spec.watermark is not None and can_watermark(*grid.size) else None
    if mark is not None:
        grid = apply_watermark(grid, mark.encode("utf-8"))
    record = {"sdcli_version": first.get("sdcli_version"), "task": first.get("task"), "model": first.get("model"),
              "model_sha256": first.get("model_sha256"), "images": len(images), "watermark": mark, "grid_of": spec.key}
    suffix = outputs.suffix_of(spec.format)
    data = outputs.encode_image(grid, suffix, parameters, record, spec.quality)
    return str(outputs.write_numbered(Path(outdir), data, outputs.GRID_RE, "grid-{:04d}" + suffix))


@dataclass
class Outcome:
    status: str  # written, exists, incomplete, sizes
    path: Optional[str] = None
    missing: int = 0


def build(outdir: Path, spec: GridSpec) -> Outcome:
    """Write the grid of ``spec`` from the files on disk if every image is complete and no grid shows it yet.
    Under the manifest lock: of shards finishing together, one writes it."""
    from PIL import Image

    outdir = Path(outdir)
    with manifest.manifest_lock(outdir):
        found = existing(outdir, spec.key)
        if found is not None:
            return Outcome("exists", found)
        done = manifest.completed(outdir)
        missing = sum(1 for j in spec.jobs if j not in done)
        if missing:
            return Outcome("incomplete", missing=missing)
        images = []
        for job in spec.jobs:
            with Image.open(outdir / done[job]["path"]) as im:
                images.append(im.convert("RGB"))
        first = done[spec.jobs[0]]
        parameters = outputs.read_metadata(str(outdir / first["path"])).get("parameters", "")
        path = encode(outdir, spec, images, first, parameters)
    return Outcome("written", path) if path else Outcome("sizes")


def build_all(outdir: str) -> list[tuple[GridSpec, Outcome]]:
    """``sdcli grid OUTDIR``: the grid of every split run recorded in OUTDIR whose images are all done."""
    from .errors import UsageError

    root = Path(outdir).expanduser()
    if not root.is_dir():
        raise UsageError(f"{outdir}: no such folder; give the --outdir of a run made with --shard or a launcher")
    specs = runs_in(root)
    if not specs:
        raise UsageError(f"{outdir}: its {manifest.MANIFEST} records no split run (runs made with --shard or "
                         "under a launcher record one; a single process writes its grid itself)")
    return [(spec, build(root, spec)) for spec in specs]


def spec_for(p) -> Optional[GridSpec]:
    """The grid a plan promises (None: no grid): its images in job order, columns, file type, watermark."""
    cfg = p.cfg
    if cfg.skip_grid or cfg.output is not None or p.named_after_inputs or len(p.jobs) > GRID_MAX_IMAGES:
        return None
    jobs = tuple(j.id for j in p.jobs if j.error is None)
    return GridSpec(jobs, cfg.n_rows or cfg.n_samples, cfg.format, cfg.quality,
                    cfg.watermark_text if cfg.watermark else None) if jobs else None


def report(reporter, outdir: Path, spec: GridSpec) -> Optional[str]:
    """Write a split run's grid if its last image is done (and say why not); the path when written."""
    outcome = build(outdir, spec)
    if outcome.status == "written":
        reporter.info(f"every image of the run is done: grid {outcome.path}")
        return outcome.path
    if outcome.status == "incomplete":
        reporter.info(f"grid: {outcome.missing} of the run's {len(spec.jobs)} image(s) are not done yet; the last "
                      f"shard to finish writes it (or run: sdcli grid {outdir})")
    elif outcome.status == "sizes":
        reporter.warn("images of different sizes: no grid written")
    return None
