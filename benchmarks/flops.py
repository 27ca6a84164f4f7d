"""The physical limit of this CPU for Stable Diffusion: work per image and the machine's measured peak.

    python benchmarks/flops.py MODEL_FOLDER [--sizes 256,512] [--seconds 3]      -> one JSON line

1. FLOPs (torch.utils.flop_counter.FlopCounterMode, multiply-add = 2) of one UNet call at batch 2 (the CFG pair)
   and of one VAE decode, per image size, on the model's architecture (built from its configs with random
   weights: the work does not depend on the values).
2. Peak throughput measured here with all threads: a 3x3 convolution shaped like the UNet's widest layers and a
   square matmul, in fp32 and bf16 (best of a few timed repeats of about ``--seconds`` each).
The bench's `limits` section turns these into the shortest possible time per image and each entry's fraction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch.utils.flop_counter import FlopCounterMode


def count(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def model_flops(folder: str, sizes: list[int]) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet")).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae")).eval()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    ctx = torch.zeros(2, 77, unet.config.cross_attention_dim)
    out = {}
    for size in sizes:
        lat = size // scale
        x = torch.zeros(2, unet.config.in_channels, lat, lat)
        z = torch.zeros(1, vae.config.latent_channels, lat, lat)
        out[str(size)] = {"unet_cfg_step": count(lambda: unet(x, torch.tensor(500), ctx)),
                          "vae_decode": count(lambda: vae.decode(z))}
    return out


def best_rate(fn, flops: int, seconds: float) -> float:
    """GFLOP/s of ``fn`` (``flops`` per call): the best of 3 timed blocks of about ``seconds`` each."""
    fn()
    t = time.perf_counter()
    fn()
    per = max(time.perf_counter() - t, 1e-4)
    n = max(1, int(seconds / per))
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, flops * n / (time.perf_counter() - t) / 1e9)
    return best


def peaks(seconds: float) -> dict:
    out = {}
    with torch.no_grad():
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            conv = torch.nn.Conv2d(640, 640, 3, padding=1).to(dtype)
            x = torch.randn(2, 640, 32, 32, dtype=dtype)
            conv_flops = 2 * 2 * 640 * 640 * 9 * 32 * 32
            a = torch.randn(2048, 2048, dtype=dtype)
            out[name] = {"conv3x3": round(best_rate(lambda: conv(x), conv_flops, seconds), 1),
                         "matmul": round(best_rate(lambda: a @ a, 2 * 2048**3, seconds), 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    flops = model_flops(a.model, [int(s) for s in a.sizes.split(",")])
    print(json.dumps({"flops": flops, "peak_gflops": peaks(a.seconds), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
