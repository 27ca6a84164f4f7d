"""One small class per task: its pipeline, its typed inputs, its checks and its pipeline arguments.

Everything else (config, prompts, seeds, device, schedulers, safety checker, watermark, outputs, manifest)
is shared by all tasks. Adding a task means adding a class here (and its inputs class, if it has its own
inputs) and registering it in ``TASKS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import images, limits
from .images import InputFile
from .inputs import DepthInputs, EditInputs, ImageInputs, MaskInputs, StrengthInputs, UncheckedInputs
from .config import SIZE_FROM_INPUT, TASK_NAMES, RunConfig
from .errors import UsageError
from .prompts import Job, Row, denoising_steps


@dataclass
class Prepared:
    kwargs: dict[str, Any]  # task-specific pipeline arguments
    depth: Any = None  # depth2img: the depth map used, as a PIL image (for --save-depth)


# --- tasks -------------------------------------------------------------------------------------------

class Task:
    """txt2img: a prompt, no input image."""

    name = "txt2img"
    pipeline_class = "StableDiffusionPipeline"
    default_model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    row_keys: frozenset = frozenset()  # extra keys a prompt-file row may carry

    @property
    def outdir(self) -> str:
        return f"outputs/{self.name}-samples"

    def check(self, cfg: RunConfig) -> None:
        """Checks of the config that only this task makes."""

    def expand_rows(self, cfg: RunConfig, rows: list[Row]) -> list[Row]:
        """Attach each row's checked inputs (one row per input image)."""
        return rows

    def prepare(self, pipe, batch: list[Job], width: int, height: int) -> Prepared:
        """Task-specific pipeline arguments for a batch (its jobs share inputs and settings)."""
        return Prepared({"height": height, "width": width})

    def finish(self, batch: list[Job], prepared: Prepared, generated: list) -> list:
        """The batch's images after the pipeline, before the safety checker (inpaint pastes the input back)."""
        return generated


Info = Callable[[str], images.ImageInfo]  # input key ("image", "mask", ...) -> the checked file


class ImageTask(Task):
    """A task with an input image (a file, folder or glob, or per prompt-file row)."""

    files: tuple = ()  # input files besides the image, from flags or rows ("mask", "depth_map")
    inputs_class: type = ImageInputs

    @property
    def row_keys(self) -> frozenset:
        return frozenset({"image", *self.files, *(f.name for f in dataclasses.fields(self.inputs_class))}) \
            - {"resize_mode", "mask_blur"}  # flags and config only

    def expand_rows(self, cfg: RunConfig, rows: list[Row]) -> list[Row]:
        flagged = self.flag_files(cfg)
        base = Path(cfg.from_file).parent if cfg.from_file else Path(".")
        seen: dict[str, images.ImageInfo] = {}
        out = []
        for row in rows:
            own = "image" in row.overrides
            if own:
                files = {k: str(base / Path(row.overrides[k]).expanduser())
                         for k in ("image", *self.files) if k in row.overrides}
                inputs = [{**{k: v for k, v in flagged[0].items() if k != "image"}, **files}]
            elif flagged[0].get("image"):
                inputs = flagged
            else:
                raise UsageError(f"{row.source}: no input image; give --image (or an 'image' field in the prompt file)")
            for files in inputs:
                def info(key: str, files=files) -> images.ImageInfo:
                    path = files[key]
                    if path not in seen:
                        seen[path] = images.inspect(path, f"{row.source}: {key}" if own else f"--{key.replace('_', '-')}")
                    return seen[path]
                try:
                    checked, size = self.checked(cfg, row, files, info)
                except UsageError as e:
                    # A bad input of one prompt-file row fails that row only, unless --fail-fast.
                    if not own or cfg.fail_fast:
                        raise
                    raw = tuple(sorted({**{k: v for k, v in row.overrides.items() if k in self.row_keys}, **files}.items()))
                    out.append(Row(row.prompt, row.overrides, row.source, error=str(e), inputs=UncheckedInputs(raw)))
                    continue
                out.append(Row(row.prompt, {**row.overrides, "W": size[0], "H": size[1]}, row.source, inputs=checked))
        return out

    def flag_files(self, cfg: RunConfig) -> list[dict[str, str]]:
        """Input files named by flags: one mapping per input image."""
        common = {k: getattr(cfg, k) for k in self.files if getattr(cfg, k) is not None}
        if cfg.indir is not None:
            raise UsageError("--indir: only inpaint takes a folder of image/mask pairs; use --image FOLDER")
        if cfg.image is None:
            return [common]
        return [{"image": p, **common} for p in images.expand(cfg.image, "--image")]

    def checked(self, cfg: RunConfig, row: Row, files: dict[str, str], info: Info) -> tuple[ImageInputs, tuple[int, int]]:
        """One row's inputs, checked, and the output size (W, H)."""
        image = info("image")
        size = images.target_size(image.width, image.height, row.overrides.get("W", cfg.W),
                                  row.overrides.get("H", cfg.H), cfg.resolution)
        side = limits.LIMITS["W"]
        for name, value in zip("WH", size):
            if not side.lo <= value <= side.hi:
                raise UsageError(f"--image {image.path}: output {name} {value} out of range; set --W/--H")
        own = self.own_inputs(cfg, row, files, info, image)
        return self.inputs_class(image=InputFile(image.path, image.sha256), resize_mode=cfg.resize_mode, **own), size

    def own_inputs(self, cfg: RunConfig, row: Row, files: dict[str, str], info: Info,
                   image: images.ImageInfo) -> dict[str, Any]:
        """The fields of this task's inputs class beyond the image."""
        return {}

    def prepare(self, pipe, batch: list[Job], width: int, height: int) -> Prepared:
        inputs = batch[0].inputs
        image = images.load(inputs.image, width, height, inputs.resize_mode)
        return Prepared({"image": image, **self.pipeline_inputs(inputs, width, height)})

    def pipeline_inputs(self, inputs: ImageInputs, width: int, height: int) -> dict[str, Any]:
        return {}


class Img2Img(ImageTask):
    name = "img2img"
    pipeline_class = "StableDiffusionImg2ImgPipeline"
    inputs_class = StrengthInputs

    def own_inputs(self, cfg, row, files, info, image) -> dict[str, Any]:
        strength = row.overrides.get("strength", cfg.strength)  # the task's default: config.TASK_DEFAULTS
        if strength is None:
            raise UsageError(f"--strength: {self.name} needs a strength between 0 and 1 (the config sets none)")
        steps = row.overrides.get("steps", cfg.steps)
        if denoising_steps(steps, strength) < 1:
            raise UsageError(f"--strength {strength} with --steps {steps} runs no denoising step "
                             f"(steps x strength < 1); raise --strength or --steps")
        return {"strength": float(strength)}

    def pipeline_inputs(self, inputs, width, height) -> dict[str, Any]:
        return {"strength": inputs.strength}


class Inpaint(Img2Img):
    name = "inpaint"
    pipeline_class = "StableDiffusionInpaintPipeline"
    default_model = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    inputs_class = MaskInputs
    files = ("mask",)

    def flag_files(self, cfg: RunConfig) -> list[dict[str, str]]:
        if cfg.indir is None:
            return super().flag_files(cfg)
        if cfg.image is not None:
            raise UsageError("--indir and --image: give one of them")
        return [{"image": i, "mask": m} for i, m in images.inpaint_pairs(cfg.indir)]

    def own_inputs(self, cfg, row, files, info, image) -> dict[str, Any]:
        if "mask" not in files:
            raise UsageError(f"{row.source}: inpaint needs a mask; give --mask (white = repaint) or --indir")
        mask = info("mask")
        if (mask.width, mask.height) != (image.width, image.height):
            raise UsageError(f"--mask {mask.path}: {mask.width}x{mask.height} differs from the image "
                             f"{image.path} ({image.width}x{image.height}); give a mask of the same size")
        return {**super().own_inputs(cfg, row, files, info, image), "mask": InputFile(mask.path, mask.sha256),
                "mask_blur": cfg.mask_blur if cfg.paste_back else None}

    def finish(self, batch: list[Job], prepared: Prepared, generated: list) -> list:
        inputs = batch[0].inputs
        if inputs.mask_blur is None:  # --no-paste-back
            return generated
        original, mask = prepared.kwargs["image"], prepared.kwargs["mask_image"]
        return [images.paste_back(im, original, mask, inputs.mask_blur) for im in generated]

    def pipeline_inputs(self, inputs, width, height) -> dict[str, Any]:
        mask = images.load(inputs.mask, width, height, inputs.resize_mode, "L")
        return {**super().pipeline_inputs(inputs, width, height), "mask_image": mask, "height": height, "width": width}


class Depth2Img(Img2Img):
    name = "depth2img"
    pipeline_class = "StableDiffusionDepth2ImgPipeline"
    default_model = "stabilityai/stable-diffusion-2-depth"
    inputs_class = DepthInputs
    files = ("depth_map",)

    def own_inputs(self, cfg, row, files, info, image) -> dict[str, Any]:
        own = super().own_inputs(cfg, row, files, info, image)
        if "depth_map" in files:
            depth = info("depth_map")
            if images.is_flat(depth.path):
                raise UsageError(f"--depth-map {depth.path}: one value everywhere (no depth); give a depth map "
                                 "with near (white) and far (dark) parts, or leave it out to estimate one")
            own["depth_map"] = InputFile(depth.path, depth.sha256)
        return own

    def prepare(self, pipe, batch: list[Job], width: int, height: int) -> Prepared:
        prepared = super().prepare(pipe, batch, width, height)
        inputs = batch[0].inputs
        prepared.kwargs["depth_map"], prepared.depth = images.depth_map(
            pipe, prepared.kwargs["image"], inputs.depth_map, width, height, inputs.resize_mode)
        return prepared


class InstructEdit(ImageTask):
    name = "instruct-edit"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    default_model = "timbrooks/instruct-pix2pix"
    inputs_class = EditInputs

    def check(self, cfg: RunConfig) -> None:
        if cfg.prompt is None and cfg.from_file is None:
            raise UsageError("--prompt: instruct-edit needs the edit instruction (--prompt or --edit)")

    def own_inputs(self, cfg, row, files, info, image) -> dict[str, Any]:
        return {"image_guidance_scale": float(row.overrides.get("image_guidance_scale", cfg.image_guidance_scale))}

    def prepare(self, pipe, batch: list[Job], width: int, height: int) -> Prepared:
        prepared = super().prepare(pipe, batch, width, height)
        prepared.kwargs["image"] = [prepared.kwargs["image"]] * len(batch)
        prepared.kwargs["image_guidance_scale"] = batch[0].inputs.image_guidance_scale
        return prepared


TASKS: dict[str, Task] = {t.name: t for t in (Task(), Img2Img(), Inpaint(), Depth2Img(), InstructEdit())}
assert tuple(TASKS) == TASK_NAMES
assert tuple(t.name for t in TASKS.values() if isinstance(t, ImageTask)) == SIZE_FROM_INPUT


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"--task {name}: unknown task; one of {', '.join(TASKS)}") from None
