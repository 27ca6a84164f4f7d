"""The typed inputs of the image tasks' jobs: which files (by path and sha256) and settings make an image,
and how each kind records itself (job ids, metadata, A1111 text). Frozen: jobs with equal inputs share a
batch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from .images import InputFile


@dataclass(frozen=True)
class ImageInputs:
    """The checked inputs of an image task's job (frozen: jobs with equal inputs share a batch)."""

    image: InputFile
    resize_mode: str
    RECORD_NAMES: ClassVar[dict] = {"image": "input_image", "image_sha256": "input_image_sha256"}
    A1111: ClassVar[dict] = {}  # field -> A1111 parameter name
    A1111_FILES: ClassVar[dict] = {"image": "Init image", "mask": "Mask image", "depth_map": "Depth map"}

    def fields(self) -> dict[str, Any]:
        """Flat: ``image``, ``image_sha256``, ... (files as path + sha256; unset ones left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, InputFile):
                out[f.name], out[f"{f.name}_sha256"] = value.path, value.sha256
            elif value is not None:
                out[f.name] = value
        return out

    def files(self) -> dict[str, InputFile]:
        return {f.name: v for f in dataclasses.fields(self) if isinstance(v := getattr(self, f.name), InputFile)}

    def record(self) -> dict[str, Any]:
        """Fields for the metadata and the manifest (the input image as ``input_image``): files by their name
        and sha256, not by a path of the user's machine (``fields`` keeps the path: job ids hash it)."""
        files = self.files()
        return {self.RECORD_NAMES.get(k, k): Path(files[k].path).name if k in files else v
                for k, v in self.fields().items()}

    def a1111(self) -> dict[str, Any]:
        out = {label: getattr(self, key) for key, label in self.A1111.items()}
        for key, file in self.files().items():
            label = self.A1111_FILES.get(key, key)
            out[label], out[f"{label} sha256"] = Path(file.path).name, file.sha256
        return out


@dataclass(frozen=True)
class StrengthInputs(ImageInputs):  # img2img
    strength: float = 0.75
    A1111: ClassVar[dict] = {"strength": "Denoising strength"}


@dataclass(frozen=True)
class MaskInputs(StrengthInputs):  # inpaint
    mask: Optional[InputFile] = None
    # Paste-back (CompVis inpaint.py): the unmasked pixels come from the input, the edge feathered by this many
    # pixels. None: no paste-back (--no-paste-back; left out of the record and the job id, as in sdcli 0.1).
    mask_blur: Optional[int] = None
    A1111: ClassVar[dict] = {"strength": "Denoising strength", "mask_blur": "Mask blur"}


@dataclass(frozen=True)
class DepthInputs(StrengthInputs):  # depth2img
    depth_map: Optional[InputFile] = None  # None: estimated by the model


@dataclass(frozen=True)
class EditInputs(ImageInputs):  # instruct-edit
    image_guidance_scale: float = 1.5
    A1111: ClassVar[dict] = {"image_guidance_scale": "Image CFG scale"}


@dataclass(frozen=True)
class UncheckedInputs:
    """A prompt-file row whose inputs failed their checks: kept as given, for its failure record."""

    items: tuple

    def fields(self) -> dict[str, Any]:
        return dict(self.items)
