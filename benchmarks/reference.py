"""The reference: the ten-line diffusers script that sdcli's txt2img is measured against.

    python benchmarks/reference.py MODEL_FOLDER PROMPT STEPS H W SEED SCHEDULER OUT.png [--batch N] [--timings]

Same work as ``sdcli txt2img --n_samples 1 --n_iter 1 --no-safety-checker --no-watermark --skip-grid``:
fp32 on the CPU, guidance 7.5, eta 0, DDIM with clip_sample off (as sdcli keeps the model's intent), and
the same seeding (a CPU generator per image, passed as a list). Nothing else: no metadata, no manifest.

Optional (the peers section): ``--batch N`` makes N images of the prompt in one call (image k seeded SEED+k, as
sdcli's --n_samples N), written as OUT.png, OUT-1.png, ...; ``--timings`` prints one JSON line on stdout with
load_s (from_pretrained and the scheduler) and gen_s (the pipeline call and writing the PNGs).
"""
import json
import sys
import time

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

folder, prompt, steps, height, width, seed, scheduler, out = sys.argv[1:9]
extra = sys.argv[9:]
batch = int(extra[extra.index("--batch") + 1]) if "--batch" in extra else 1
t0 = time.perf_counter()
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
if scheduler == "ddim":
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
elif scheduler != "model":
    sys.exit(f"reference.py: scheduler {scheduler!r}: only ddim or model")
t1 = time.perf_counter()
generators = [torch.Generator("cpu").manual_seed(int(seed) + k) for k in range(batch)]
images = pipe(prompt=[prompt], negative_prompt=[""], num_inference_steps=int(steps), height=int(height),
              width=int(width), guidance_scale=7.5, eta=0.0, generator=generators, num_images_per_prompt=batch).images
stem, dot, suffix = out.rpartition(".")
paths = [out if k == 0 else f"{stem}-{k}.{suffix}" for k in range(batch)]
for image, path in zip(images, paths):
    image.save(path)
if "--timings" in extra:
    gen = time.perf_counter() - t1
    print(json.dumps({"load_s": round(t1 - t0, 3), "gen_s": round(gen, 3), "per_image_s": round(gen / batch, 3),
                      "images": paths}))
