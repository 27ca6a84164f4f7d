"""Does a txt2img model use the position words?  python diag_position.py models/txt2img

1. sensitivity: 2 prompts x 4 seeds x 9 position words (same seed across words), DDIM 20 / CFG 7.5 as saved;
   pos accuracy, slope of the measured centroid on the commanded column/row (ideal ~ +15 px, 0 = ignored),
   distinct positions per seed across the 9 words (1 = the noise alone sets the layout, 9 = ideal).
2. first-step x0 prediction (t = first sampling step) for the 9 words from one noise: its std across the words
   vs its spatial std (about 0 / 0.6 when the words are ignored).
3. text encoder: per-token norm of the change of the last hidden state when two position words are swapped,
   compared with swapping a colour word (token norm ~8).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from . import checker, world

torch.set_num_threads(1)
BASES = ["a medium red square on a blue background", "a large yellow circle on a black background"]


@torch.no_grad()
def main(folder: str) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    words = list(world.POSITIONS)
    acc, cx, cy, col, row, distinct = [], [], [], [], [], []
    for base in BASES:
        for seed in range(4):
            ims = pipe([f"{base}, {w}" for w in words], num_inference_steps=20, guidance_scale=7.5, height=world.SIZE,
                       width=world.SIZE, generator=[torch.Generator().manual_seed(seed) for _ in words]).images
            got = [checker.measure(im) for im in ims]
            distinct.append(len({m.get("pos") for m in got}))
            for w, m in zip(words, got):
                acc.append(m.get("pos") == w)
                if "bbox" in m:
                    x, y, bw, bh = m["bbox"]
                    cx.append(x + bw / 2), cy.append(y + bh / 2), col.append(world.POSITIONS[w][0]), row.append(world.POSITIONS[w][1])
    out = {"model": folder, "pos_acc": round(float(np.mean(acc)), 3), "slope_x_px": round(float(np.polyfit(col, cx, 1)[0]), 2),
           "slope_y_px": round(float(np.polyfit(row, cy, 1)[0]), 2), "distinct_per_seed": round(float(np.mean(distinct)), 2)}

    tok, te, sch = pipe.tokenizer, pipe.text_encoder, pipe.scheduler
    enc = lambda ps: te(tok(ps, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids)[0]
    emb = enc([f"{BASES[1]}, {w}" for w in words])
    sch.set_timesteps(20)
    t = int(sch.timesteps[0])
    ac = sch.alphas_cumprod[t]
    z = torch.randn(1, 4, world.SIZE // 4, world.SIZE // 4, generator=torch.Generator().manual_seed(0)).repeat(len(words), 1, 1, 1)
    pred = pipe.unet(z, t, emb).sample
    if sch.config.prediction_type == "v_prediction":
        x0 = ac.sqrt() * z - (1 - ac).sqrt() * pred
    else:
        x0 = (z - (1 - ac).sqrt() * pred) / ac.sqrt()
    img = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    out.update(first_step_t=t, x0_std_across_words=round(img.std(0).mean().item(), 4),
               x0_spatial_std=round(img.std((2, 3)).mean().item(), 3))

    a, b, c = enc([f"{BASES[1]}, top left", f"{BASES[1]}, bottom right", f"{BASES[1].replace('yellow', 'red')}, top left"])
    n = len(tok(f"{BASES[1]}, top left").input_ids)  # tokens incl. <sot>, <eot>
    out.update(te_delta_position_words=[round(v, 2) for v in (b - a).norm(dim=-1)[n - 3:n - 1].tolist()],
               te_delta_colour_word=round((c - a).norm(dim=-1)[3].item(), 2), te_token_norm=round(a.norm(dim=-1).mean().item(), 2))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1])
