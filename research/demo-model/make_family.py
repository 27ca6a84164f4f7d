"""Retrain the whole demo family from scratch, deterministically, and report the time of each stage.

    OMP_NUM_THREADS=1 ../../.venv/bin/python make_family.py [stage ...]   # stages: vae txt2img pix2pix depth

Outputs: work/vae (shared VAE), models/txt2img, models/instruct-pix2pix, models/depth2img (diffusers folders),
logs in work/*_log.jsonl, stage times in work/family_times.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import train  # noqa: E402  (sets torch to one thread)
import train_cond  # noqa: E402



def vae() -> None:
    """Phase 1: plain reconstruction loss; phase 2: loss weighted up on the shape and its edges."""
    train.train_vae(out=train.WORK / "vae_p1")
    train.train_vae(steps=1500, bs=16, lr=1e-3, seed=10, init=train.WORK / "vae_p1", out=train.WORK / "vae",
                    edge_weight=10.0)


def txt2img() -> None:
    """Phase 1 from scratch (2000 steps, lr 1e-3); phase 2 continues it with fresh optimizer state."""
    train.train_txt2img(out=train.WORK / "txt2img_p1")
    train.train_txt2img(**TXT2IMG_P2)


TXT2IMG_P2 = dict(steps=1200, lr=5e-4, seed=1, eval_every=400, init=train.WORK / "txt2img_p1", tag="txt2img_p2")
STAGES = {"vae": vae, "txt2img": txt2img, "pix2pix": train_cond.train_pix2pix, "depth": train_cond.train_depth}


def main(stages: list[str]) -> dict:
    train.WORK.mkdir(parents=True, exist_ok=True)
    times = {}
    t_all = time.time()
    for name in stages:
        t = time.time()
        STAGES[name]()
        times[name] = round(time.time() - t, 1)
        print(f"== {name}: {times[name]} s", flush=True)
    times["total"] = round(time.time() - t_all, 1)
    (train.WORK / "family_times.json").write_text(json.dumps(times, indent=1))
    print(json.dumps(times))
    return times


if __name__ == "__main__":
    main(sys.argv[1:] or list(STAGES))
