"""Retrain the whole demo family from scratch, deterministically, and report the time of each stage.

    python -m sdcli.demo.family [--work DIR] [--export DIR] [stage ...]   # stages: vae txt2img pix2pix depth inpaint

(``make demo-model`` runs all stages and exports into sdcli/demo/weights.) Outputs: WORK/vae (shared VAE),
WORK/models/{txt2img,instruct-pix2pix,depth2img,inpaint} (diffusers folders), logs in WORK/*_log.jsonl, stage times in
WORK/family_times.json; ``--export`` then writes the shipped copy (UNet and VAE weights in float16).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from . import train, train_cond  # noqa: E402  (train sets torch to one thread)



def vae() -> None:
    """Phase 1: plain reconstruction loss; phase 2: loss weighted up on the shape and its edges."""
    train.train_vae(out=train.WORK / "vae_p1")
    train.train_vae(steps=1500, bs=16, lr=1e-3, seed=10, init=train.WORK / "vae_p1", out=train.WORK / "vae",
                    edge_weight=10.0)


def txt2img() -> None:
    """Phase 1 from scratch (2000 steps, lr 1e-3, min-SNR-5); phase 2 continues it with fresh optimizer state
    (1200 steps, lr 5e-4); phase 3 (400 steps, lr 2e-4) with the plain MSE loss, which weights the low-noise steps
    that min-SNR nearly ignores (they keep colours in img2img and inpaint)."""
    w = train.WORK
    train.train_txt2img(out=w / "txt2img_p1")
    train.train_txt2img(steps=1200, lr=5e-4, seed=1, eval_every=400, init=w / "txt2img_p1", tag="txt2img_p2",
                        out=w / "txt2img_p2")
    train.train_txt2img(steps=400, lr=2e-4, seed=3, eval_every=200, init=w / "txt2img_p2", tag="txt2img_p3",
                        out=train.MODELS / "txt2img", snr_gamma=0)
def pix2pix() -> None:
    """Phase 1 (800 steps, lr 5e-4) widens the phase-2 txt2img UNet to 8 channels; phase 2 (2000 steps, lr 3e-4)
    continues it. The image conditioning (keep what the instruction does not change) came slowly with the
    epsilon loss, which hardly weights the high-noise steps where the picture's layout and colours are decided;
    phases 3 and 4 (800 + 1000 steps) weight those steps by their x0 error (``x0_cap``) and learned it."""
    w = train.WORK
    train_cond.train_pix2pix(base=w / "txt2img_p2", out=w / "pix2pix_p1")
    train_cond.train_pix2pix(steps=2000, lr=3e-4, seed=4, init=w / "pix2pix_p1", out=w / "pix2pix_p2")
    train_cond.train_pix2pix(steps=800, lr=3e-4, seed=9, init=w / "pix2pix_p2", out=w / "pix2pix_p3", x0_cap=20.0)
    train_cond.train_pix2pix(steps=1000, lr=2e-4, seed=11, init=w / "pix2pix_p3", x0_cap=20.0)


def depth() -> None:
    """Phase 1 (600 steps, lr 5e-4) widens the phase-2 txt2img UNet to 5 channels; phase 2 (800 steps, lr 3e-4,
    x0-weighted at high noise as pix2pix)."""
    w = train.WORK
    train_cond.train_depth(base=w / "txt2img_p2", out=w / "depth_p1")
    train_cond.train_depth(steps=800, lr=3e-4, seed=6, init=w / "depth_p1", x0_cap=20.0)


def inpaint() -> None:
    """9 channels from the finished txt2img model: 1200 steps (lr 5e-4), then 600 + 1000 x0-weighted (lr 3e-4), which
    taught it to keep the unmasked part (mean change outside the mask 85 -> 48 -> see BENCHMARKS.md)."""
    w = train.WORK
    train_cond.train_inpaint(steps=1200, out=w / "inpaint_p1")
    train_cond.train_inpaint(steps=600, lr=3e-4, seed=8, init=w / "inpaint_p1", out=w / "inpaint_p2", x0_cap=20.0)
    train_cond.train_inpaint(steps=1000, lr=3e-4, seed=10, init=w / "inpaint_p2", x0_cap=20.0)


STAGES = {"vae": vae, "txt2img": txt2img, "pix2pix": pix2pix, "depth": depth, "inpaint": inpaint}


FAMILY = ("txt2img", "instruct-pix2pix", "depth2img", "inpaint")


def export(models: Path, dest: Path) -> int:
    """Copy the finished family into ``dest`` with the UNet and VAE weights stored as float16 (half the size;
    diffusers loads them back as float32). The text encoders and the depth estimator stay float32: transformers
    would keep float16 and break a plain float32 ``from_pretrained``. Returns the bytes written."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in FAMILY:
        shutil.copytree(models / name, tmp / name, ignore=shutil.ignore_patterns("last", "*.png"))
        for part in ("unet", "vae"):
            f = tmp / name / part / "diffusion_pytorch_model.safetensors"
            save_file({k: v.to(torch.float16) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
            cfg = tmp / name / part / "config.json"  # a continued phase records where it was loaded from
            data = json.loads(cfg.read_text())
            if data.pop("_name_or_path", None) is not None:
                cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


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
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sdcli.demo.family", description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="demo-build", help="working folder (checkpoints, caches, logs)")
    ap.add_argument("--export", help="write the shipped copy of the family here (e.g. sdcli/demo/weights)")
    ap.add_argument("stages", nargs="*", help=f"any of {', '.join(STAGES)} (default: all, in that order)")
    args = ap.parse_args()
    if set(args.stages) - set(STAGES):
        ap.error(f"unknown stage(s) {', '.join(sorted(set(args.stages) - set(STAGES)))}; choose from {', '.join(STAGES)}")
    train.set_paths(Path(args.work), Path(args.work) / "models")
    if args.stages or not args.export:
        main(args.stages or list(STAGES))
    if args.export:
        print(f"exported {export(train.MODELS, Path(args.export)) / 1e6:.1f} MB to {args.export}")
