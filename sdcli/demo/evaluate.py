"""Prompt adherence of a demo txt2img model on the held-out prompts, with the plain diffusers pipeline.

    python evaluate.py models/txt2img            # 120 held-out prompts, default 50 PNDM steps, CFG 7.5

The held-out prompts name (colour, shape, background) triples that were never used in training
(``world.is_held_out``). Each prompt gets seed = its index. Prints per-attribute accuracy and the time of one
image at the default settings.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from . import checker, world

torch.set_num_threads(1)


def eval_prompts(n: int = 120) -> list[str]:
    return [p for p, _ in world.heldout_prompts(n)]


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int = 50, guidance: float = 7.5, batch: int = 24, seed0: int = 0):
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        gens = [torch.Generator("cpu").manual_seed(seed0 + i + j) for j in range(len(chunk))]
        images += pipe(chunk, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=world.SIZE, width=world.SIZE).images
    return images


def adherence(pipe, prompts: list[str], steps: int = 50, guidance: float = 7.5, return_images: bool = False):
    pipe.set_progress_bar_config(disable=True)
    images = generate(pipe, prompts, steps, guidance)
    score = {k: round(v, 3) for k, v in checker.summarize([checker.check(im, p) for im, p in zip(images, prompts)]).items()}
    return (score, images) if return_images else score


def grid(images, cols: int = 12, scale: int = 2):
    from PIL import Image

    rows = (len(images) + cols - 1) // cols
    s = world.SIZE * scale
    g = Image.new("RGB", (cols * s, rows * s), "gray")
    for i, im in enumerate(images):
        g.paste(im.resize((s, s), Image.NEAREST), ((i % cols) * s, (i // cols) * s))
    return g


def time_one(pipe, prompt: str = "a small red circle on a blue background, top left", runs: int = 5) -> float:
    """Median seconds for one image at the pipeline defaults (50 steps, CFG 7.5)."""
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt, generator=torch.Generator("cpu").manual_seed(0), height=world.SIZE, width=world.SIZE)
    times = []
    for r in range(runs):
        t = time.perf_counter()
        pipe(prompt, generator=torch.Generator("cpu").manual_seed(r), height=world.SIZE, width=world.SIZE)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(folder: str, n: int = 120, steps: int = 50, guidance: float = 7.5) -> dict:
    from diffusers import StableDiffusionPipeline

    t = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    load_s = time.perf_counter() - t
    prompts = eval_prompts(n)
    t = time.perf_counter()
    score, images = adherence(pipe, prompts, steps, guidance, return_images=True)
    gen_s = time.perf_counter() - t
    grid(images).save(os.path.join(folder, "..", f"eval_{os.path.basename(folder.rstrip('/'))}.png"))
    result = {"model": folder, "n": len(prompts), "steps": steps, "guidance": guidance, **score,
              "load_s": round(load_s, 2), "batch_gen_s_per_image": round(gen_s / len(prompts), 3),
              "one_image_s": round(time_one(pipe), 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
