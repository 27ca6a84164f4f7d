"""Per task: pipeline class, defaults, input images, and the task-specific pipeline arguments.

Everything else (config, prompts, seeds, device, schedulers, safety checker, watermark, outputs,
manifest) is shared by all tasks in ``runner.py``; a task only adds what is its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import images
from .config import TASK_NAMES
from .errors import UsageError
from .prompts import Job, Row


@dataclass
class Prepared:
    kwargs: dict[str, Any]  # task-specific pipeline arguments
    depth: Any = None  # depth2img: the depth map used, as a PIL image (for --save-depth)


@dataclass(frozen=True)
class Task:
    name: str
    pipeline_class: str
    default_model: str
    outdir: str
    image_input: bool = False  # needs an input image
    default_strength: Optional[float] = None  # None: the task has no strength
    mask: bool = False
    depth: bool = False
    image_guidance: bool = False
    a1111_names: dict = field(default_factory=dict)

    @property
    def row_keys(self) -> frozenset:
        """Extra keys a prompt-file row may carry for this task."""
        keys = set()
        if self.image_input:
            keys.add("image")
        if self.default_strength is not None:
            keys.add("strength")
        if self.mask:
            keys.add("mask")
        if self.depth:
            keys.add("depth_map")
        if self.image_guidance:
            keys.add("image_guidance_scale")
        return frozenset(keys)

    # --- before the model loads ------------------------------------------------------------------

    def expand_rows(self, cfg, rows: list[Row]) -> list[Row]:
        """Attach and check each row's input images; one row per input image. Sets W/H from the image."""
        if not self.image_input:
            return rows
        cli_inputs = self._cli_inputs(cfg)
        base = Path(cfg.from_file).parent if cfg.from_file else Path(".")
        seen: dict[str, images.ImageInfo] = {}
        out = []
        for row in rows:
            if "image" in row.overrides:
                own = {k: row.overrides[k] for k in ("image", "mask", "depth_map") if k in row.overrides}
                own = {k: str(base / Path(v).expanduser()) for k, v in own.items()}
                for key, value in cli_inputs[0].items():
                    own.setdefault(key, value) if key != "image" else None
                inputs = [own]
            elif cli_inputs[0].get("image"):
                inputs = cli_inputs
            else:
                raise UsageError(f"{row.source}: no input image; give --image (or an 'image' field in the prompt file)")
            for inp in inputs:
                try:
                    checked = self._checked(cfg, row, inp, seen)
                except UsageError as e:
                    # A bad input of one prompt-file row fails that row only, unless --fail-fast.
                    if "image" not in row.overrides or cfg.fail_fast:
                        raise
                    out.append(Row(row.prompt, {**row.overrides, **inp}, row.source, error=str(e)))
                    continue
                out.append(Row(row.prompt, {**row.overrides, **checked}, row.source))
        return out

    def _cli_inputs(self, cfg) -> list[dict[str, str]]:
        if cfg.indir is not None:
            if not self.mask:
                raise UsageError(f"--indir: only inpaint takes a folder of image/mask pairs; use --image FOLDER")
            if cfg.image is not None:
                raise UsageError("--indir and --image: give one of them")
            return [{"image": i, "mask": m} for i, m in images.inpaint_pairs(cfg.indir)]
        common = {k: v for k, v in (("mask", cfg.mask), ("depth_map", cfg.depth_map)) if v is not None}
        if cfg.image is None:
            return [common]
        return [{"image": p, **common} for p in images.expand(cfg.image, "--image")]

    def _checked(self, cfg, row: Row, inp: dict, seen: dict) -> dict[str, Any]:
        """Validate one row's inputs; return the overrides that make its jobs."""
        from_row = "image" in row.overrides

        def info(key: str) -> images.ImageInfo:
            path = inp[key]
            flag = f"{row.source}: {key}" if from_row else f"--{key.replace('_', '-')}"
            if path not in seen:
                seen[path] = images.inspect(path, flag)
            return seen[path]

        image = info("image")
        o: dict[str, Any] = {"image": image.path, "image_sha256": image.sha256}
        if self.mask:
            if "mask" not in inp:
                raise UsageError(f"{row.source}: inpaint needs a mask; give --mask (white = repaint) or --indir")
            mask = info("mask")
            if (mask.width, mask.height) != (image.width, image.height):
                raise UsageError(f"--mask {mask.path}: {mask.width}x{mask.height} differs from the image "
                                 f"{image.path} ({image.width}x{image.height}); give a mask of the same size")
            o.update(mask=mask.path, mask_sha256=mask.sha256)
        if self.depth and "depth_map" in inp:
            depth = info("depth_map")
            if images.is_flat(depth.path):
                raise UsageError(f"--depth-map {depth.path}: one value everywhere (no depth); give a depth map "
                                 "with near (white) and far (dark) parts, or leave it out to estimate one")
            o.update(depth_map=depth.path, depth_map_sha256=depth.sha256)
        W = row.overrides.get("W", cfg.W)
        H = row.overrides.get("H", cfg.H)
        o["W"], o["H"] = images.target_size(image.width, image.height, W, H, cfg.resolution)
        for side, value in (("W", o["W"]), ("H", o["H"])):
            if not 8 <= value <= 4096:
                raise UsageError(f"--image {image.path}: output {side} {value} out of range; set --W/--H")
        if self.default_strength is not None:
            strength = row.overrides.get("strength", cfg.strength if cfg.strength is not None else self.default_strength)
            if not 0 <= float(strength) <= 1:
                raise UsageError(f"{row.source}: strength {strength} must be between 0 and 1")
            steps = row.overrides.get("steps", cfg.steps)
            if int(steps * float(strength)) < 1:
                raise UsageError(f"--strength {strength} with --steps {steps} runs no denoising step "
                                 f"(steps x strength < 1); raise --strength or --steps")
            o["strength"] = float(strength)
        if self.image_guidance:
            scale = float(row.overrides.get("image_guidance_scale", cfg.image_guidance_scale))
            if scale < 1:
                raise UsageError(f"{row.source}: image_guidance_scale {scale} must be >= 1")
            o["image_guidance_scale"] = scale
        o["resize_mode"] = cfg.resize_mode
        return o

    # --- with the model --------------------------------------------------------------------------

    def prepare(self, pipe, batch: list[Job], width: int, height: int) -> Prepared:
        """Task-specific pipeline arguments for a batch (its jobs share inputs and settings)."""
        if not self.image_input:
            return Prepared({"height": height, "width": width})
        inp = batch[0].inputs
        mode = inp["resize_mode"]
        image = images.load(inp["image"], width, height, mode)
        kwargs: dict[str, Any] = {"image": [image] * len(batch) if self.image_guidance else image}
        if self.default_strength is not None:
            kwargs["strength"] = inp["strength"]
        if self.mask:
            kwargs.update(mask_image=images.load(inp["mask"], width, height, mode, "L"), height=height, width=width)
        if self.image_guidance:
            kwargs["image_guidance_scale"] = inp["image_guidance_scale"]
        prepared = Prepared(kwargs)
        if self.depth:
            depth, prepared.depth = depth_map(pipe, image, inp.get("depth_map"), width, height, mode)
            kwargs["depth_map"] = depth
        return prepared

    def record(self, job: Job) -> dict[str, Any]:
        """Task-specific fields for metadata and manifest: input files and their hashes, strength..."""
        keys = ("image", "image_sha256", "mask", "mask_sha256", "depth_map", "depth_map_sha256", "strength",
                "image_guidance_scale", "resize_mode")
        return {("input_image" if k == "image" else "input_image_sha256" if k == "image_sha256" else k): job.inputs[k]
                for k in keys if k in job.inputs}

    def a1111(self, job: Job) -> dict[str, Any]:
        return {label: job.inputs.get(key) for key, label in self.a1111_names.items()}


def depth_map(pipe, image, path: Optional[str], width: int, height: int, mode: str):
    """The depth map for depth2img: from a file (white = near) or the model's depth estimator.
    Returns (tensor (1, h, w) for the pipeline, PIL L image at the output size)."""
    import numpy as np
    import torch
    from PIL import Image

    if path is not None:
        pil = images.load(path, width, height, mode, "L")
        tensor = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)[None]
        return tensor, pil
    device, dtype = pipe.device, pipe.depth_estimator.dtype
    pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values.to(device, dtype)
    with torch.no_grad():
        predicted = pipe.depth_estimator(pixels).predicted_depth.float().cpu()  # (1, h, w)
    d = predicted[0].numpy()
    span = float(d.max() - d.min()) or 1.0
    pil = Image.fromarray(((d - d.min()) / span * 255).round().astype(np.uint8), "L").resize((width, height),
                                                                                           Image.Resampling.BICUBIC)
    return predicted, pil


_STRENGTH = {"strength": "Denoising strength"}
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("txt2img", "StableDiffusionPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5", "outputs/txt2img-samples"),
    Task("img2img", "StableDiffusionImg2ImgPipeline", "stable-diffusion-v1-5/stable-diffusion-v1-5",
         "outputs/img2img-samples", image_input=True, default_strength=0.75, a1111_names=_STRENGTH),
    Task("inpaint", "StableDiffusionInpaintPipeline", "stable-diffusion-v1-5/stable-diffusion-inpainting",
         "outputs/inpaint-samples", image_input=True, default_strength=1.0, mask=True, a1111_names=_STRENGTH),
    Task("depth2img", "StableDiffusionDepth2ImgPipeline", "stabilityai/stable-diffusion-2-depth",
         "outputs/depth2img-samples", image_input=True, default_strength=0.8, depth=True, a1111_names=_STRENGTH),
    Task("instruct-edit", "StableDiffusionInstructPix2PixPipeline", "timbrooks/instruct-pix2pix",
         "outputs/instruct-edit-samples", image_input=True, image_guidance=True,
         a1111_names={"image_guidance_scale": "Image CFG scale"}),
)}


assert tuple(TASKS) == TASK_NAMES


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UsageError(f"--task {name}: unknown task; one of {', '.join(TASKS)}") from None
