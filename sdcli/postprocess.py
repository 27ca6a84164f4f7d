"""Safety checker and invisible watermark, applied the same way for every task.

The checker is loaded by sdcli itself (not through the pipeline) so that every task, depth2img
included, is checked the same way, from the model's own ``safety_checker/`` or a configured source.
The watermark is invisible-watermark's dwtDct, applied on BGR arrays as the original scripts did.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import ModelUnavailable, UsageError, first_line

WATERMARK_MIN_PIXELS = 256 * 256  # dwtDct refuses smaller images
PROCESSOR_FOLDERS = ("safety_feature_extractor", "feature_extractor")
OPT_OUT = "or run without it with --no-safety-checker"


@dataclass
class SafetyChecker:
    model: Any
    processor: Any
    device: str
    dtype: Any

    def check(self, images: list) -> list[bool]:
        """Flags per image (True = NSFW). Does not change the images."""
        import numpy as np
        import torch

        inputs = self.processor(images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        arrays = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        with torch.no_grad():
            _, flags = self.model(images=arrays, clip_input=pixels)
        return [bool(f) for f in flags]


def _is_checker_config(folder: Path) -> bool:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "StableDiffusionSafetyChecker" in (data.get("architectures") or [])


def _processor_folder(root: Path) -> Optional[Path]:
    for name in PROCESSOR_FOLDERS:
        cfg = root / name / "preprocessor_config.json"
        if cfg.is_file() and "CLIPImageProcessor" in cfg.read_text():
            return root / name
    return root if (root / "preprocessor_config.json").is_file() else None


@dataclass(frozen=True)
class CheckerPlace:
    """Where a safety checker is: local folders, or a hub repo with its subfolders ("" = the root)."""

    model: str  # folder, or hub id
    processor: str  # folder, or hub id
    model_subfolder: Optional[str] = None  # hub only
    processor_subfolder: Optional[str] = None
    variant: Optional[str] = None  # a folder holding only model.<variant>.safetensors (fp16-only releases)


def _own_checker(source) -> tuple[Optional[str], str]:
    """Where the model's own checker would be, and the flag that named it."""
    if source.kind == "folder":
        return source.location, "--model"
    if source.kind == "single_file" and source.config and not source.config.lower().endswith((".yaml", ".yml")):
        return source.config, "--model-config"  # a diffusers folder or a hub id
    if source.kind == "hub":
        return source.location, "--model"
    return None, "--model"


def find_checker(configured: Optional[str], source=None) -> Optional[CheckerPlace]:
    """The checker ``--safety-checker-source`` names, or else the model's own, found without loading it (so a
    missing one stops a run, and a dry run, before the model loads). None for a built-in model that is not
    built yet: it is built with its checker."""
    where, flag = (configured, "--safety-checker-source") if configured else _own_checker(source)
    if where is None:
        raise ModelUnavailable(f"safety checker: this model has none; give one with --safety-checker-source "
                               f"PATH_OR_HUB_ID, {OPT_OUT}")
    root = Path(where).expanduser()
    if configured is None and source.builtin is not None and not root.is_dir():
        return None
    if root.is_dir():
        model_dir = root / "safety_checker" if _is_checker_config(root / "safety_checker") else root
        proc_dir = _processor_folder(root)
        if not _is_checker_config(model_dir) or proc_dir is None:
            raise ModelUnavailable(f"safety checker: {flag} {where} has no safety_checker/ with a feature extractor; "
                                   f"give one with --safety-checker-source PATH_OR_HUB_ID, {OPT_OUT}")
        return CheckerPlace(str(model_dir), str(proc_dir), variant=_only_variant(model_dir))
    return _find_in_hub(where, flag)


def _only_variant(folder: Path) -> Optional[str]:
    """``fp16`` for a folder with ``model.fp16.safetensors`` and no plain weights; else None."""
    names = set(os.listdir(folder))
    if names & {"model.safetensors", "pytorch_model.bin"}:
        return None
    variants = {n.split(".")[1] for n in names if n.startswith("model.") and n.endswith(".safetensors") and n.count(".") == 2}
    return variants.pop() if len(variants) == 1 else None


def _find_in_hub(repo: str, flag: str) -> CheckerPlace:
    """A pipeline repo (safety_checker/ + feature_extractor/) or a checker repo (files at the root). Offline,
    the cache must hold it; online, diffusers downloads what is missing."""
    from .models import offline

    layouts = [("safety_checker", "feature_extractor"), ("", "")]
    if not offline():
        return CheckerPlace(repo, repo, *layouts[0])
    from huggingface_hub import try_to_load_from_cache

    for model_sub, proc_sub in layouts:
        prefix = f"{model_sub}/" if model_sub else ""
        proc_prefix = f"{proc_sub}/" if proc_sub else ""
        if isinstance(try_to_load_from_cache(repo, f"{prefix}config.json"), str) and \
                isinstance(try_to_load_from_cache(repo, f"{proc_prefix}preprocessor_config.json"), str):
            return CheckerPlace(repo, repo, model_sub, proc_sub)
    raise ModelUnavailable(f"safety checker: {flag} {repo} has no safety checker in the Hugging Face cache "
                           f"(HF_HUB_OFFLINE is set); give one with --safety-checker-source PATH_OR_HUB_ID, {OPT_OUT}")


def load_safety_checker(configured: Optional[str], source, device: str, dtype) -> SafetyChecker:
    """Load the checker ``find_checker`` finds (the source's files must exist by now)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    from .models import offline

    place = find_checker(configured, source)

    def where(name: str, subfolder: Optional[str]) -> dict:
        hub = {"local_files_only": offline()} if subfolder is not None else {}
        return {"pretrained_model_name_or_path": name, **hub, **({"subfolder": subfolder} if subfolder else {})}

    try:
        try:
            variant = {"variant": place.variant} if place.variant else {}
            model = StableDiffusionSafetyChecker.from_pretrained(**where(place.model, place.model_subfolder), dtype=dtype,
                                                                 **variant)
            processor = CLIPImageProcessor.from_pretrained(**where(place.processor, place.processor_subfolder))
        except OSError:
            if place.model_subfolder != "safety_checker" or offline():
                raise
            # online, a checker repo (CompVis/stable-diffusion-safety-checker): files at the root
            model = StableDiffusionSafetyChecker.from_pretrained(place.model, dtype=dtype)
            processor = CLIPImageProcessor.from_pretrained(place.processor)
    except Exception as e:
        raise ModelUnavailable(f"safety checker: cannot load it from {place.model} ({first_line(e, 200)}); give one "
                               f"with --safety-checker-source PATH_OR_HUB_ID, {OPT_OUT}") from e
    return SafetyChecker(model.to(device).eval(), processor, device, dtype)


def black_like(image):
    from PIL import Image

    return Image.new("RGB", image.size)


# --- watermark ---------------------------------------------------------------------------------------

def _bits(payload: bytes):
    import numpy as np

    return list(np.unpackbits(np.frombuffer(payload, dtype=np.uint8)))


def can_watermark(width: int, height: int) -> bool:
    return width * height >= WATERMARK_MIN_PIXELS


def apply_watermark(image, payload: bytes):
    """Embed ``payload`` (dwtDct, on BGR like the originals). Same as invisible-watermark's encoder, except
    that values are clipped to 0..255 where the library lets them wrap (a visible artifact)."""
    import cv2
    import numpy as np
    import pywt
    from imwatermark.maxDct import EmbedMaxDct

    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    rows, cols = bgr.shape[:2]
    bits = _bits(payload)
    embed = EmbedMaxDct(bits, wmLen=len(bits))
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    r4, c4 = rows // 4 * 4, cols // 4 * 4
    for channel, scale in enumerate(embed._scales[:2]):
        if scale <= 0:
            continue
        ca1, (h1, v1, d1) = pywt.dwt2(yuv[:r4, :c4, channel], "haar")
        embed.encode_frame(ca1, scale)
        yuv[:r4, :c4, channel] = np.clip(pywt.idwt2((ca1, (v1, h1, d1)), "haar"), 0, 255)
    rgb = cv2.cvtColor(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR), cv2.COLOR_BGR2RGB)
    from PIL import Image

    return Image.fromarray(rgb)


def decode_watermark(image, n_bytes: int) -> bytes:
    import cv2
    import numpy as np
    from imwatermark import WatermarkDecoder

    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    return WatermarkDecoder("bytes", n_bytes * 8).decode(bgr, "dwtDct")


def read_watermark(path: str, length: Optional[int] = None) -> bytes:
    """The watermark payload of an image file. ``length`` in bytes; by default the length of the payload its
    sdcli metadata records, else of the default payload (4 bytes)."""
    from PIL import Image

    from .outputs import read_metadata

    n = length
    if n is None:
        try:
            n = len((json.loads(read_metadata(path).get("sdcli", "{}")).get("watermark") or "SDV2").encode())
        except ValueError:
            n = 4
    if n < 1 or n > 64:
        raise UsageError(f"--length {n}: must be between 1 and 64 bytes")
    with Image.open(path) as im:
        if not can_watermark(*im.size):
            raise UsageError(f"{path}: {im.size[0]}x{im.size[1]} is under 256x256 and cannot carry a watermark")
        return decode_watermark(im, n)
