"""The demo model family: small Stable Diffusion models trained in this repo on a synthetic world of shapes.

``--model demo`` picks the folder for the task from the weights shipped in the package (``weights/``); each is
a plain diffusers folder (``StableDiffusionPipeline.from_pretrained`` loads it). Nothing here imports torch:
the world (``world``), the adherence checker (``checker``) and the training code (``train``, ``train_cond``,
``family``: ``make demo-model``) are imported only by tests, benchmarks and training, never by a run.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
# task -> the folder that serves it: img2img runs on the txt2img model, inpaint on its 9-channel inpainting model
FOLDERS = {"txt2img": "txt2img", "img2img": "txt2img", "inpaint": "inpaint", "depth2img": "depth2img",
           "instruct-edit": "instruct-pix2pix"}
SIZE = 64  # the family's native image size (16x16 latents)


def folder(task: str) -> Path:
    return WEIGHTS / FOLDERS[task]
