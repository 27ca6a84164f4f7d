"""The reference: the ten-line diffusers script that sdcli's txt2img is measured against.

    python benchmarks/reference.py MODEL_FOLDER PROMPT STEPS H W SEED SCHEDULER OUT.png

Same work as ``sdcli txt2img --n_samples 1 --n_iter 1 --no-safety-checker --no-watermark --skip-grid``:
fp32 on the CPU, guidance 7.5, eta 0, DDIM with clip_sample off (as sdcli keeps the model's intent), and
the same seeding (a CPU generator per image, passed as a list). Nothing else: no metadata, no manifest.
"""
import sys

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

folder, prompt, steps, height, width, seed, scheduler, out = sys.argv[1:9]
pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
if scheduler == "ddim":
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
elif scheduler != "model":
    sys.exit(f"reference.py: scheduler {scheduler!r}: only ddim or model")
generator = torch.Generator("cpu").manual_seed(int(seed))
image = pipe(prompt=[prompt], negative_prompt=[""], num_inference_steps=int(steps), height=int(height),
             width=int(width), guidance_scale=7.5, eta=0.0, generator=[generator]).images[0]
image.save(out)
