"""The stable-diffusion.cpp peer (runs inside the sdcpp venv, benchmarks/peers/setup.py sdcpp): one txt2img run of
the bench model through stable-diffusion-cpp-python, at the settings of the bench's sdcli command, printing one
JSON line.

    ~/.cache/sdcli/bench/peers/sdcpp/venv/bin/python benchmarks/peers/sdcpp_run.py --model FOLDER --out DIR \
        [--wtype f32|f16|q8_0|q4_0] [--height 256] [--width 256] [--steps 4] [--batch 1] [--seed 42] [--prompt TEXT]

- The model: sd.cpp reads one original-LDM checkpoint, so the diffusers FOLDER is converted once
  (benchmarks/peers/to_single_file.py, cached as ~/.cache/sdcli/bench/peers/<folder>.safetensors, fp32);
  --wtype converts the weights while loading (f16, q8_0, q4_0 quantise at load time, so load_s includes that).
- Sampling: ddim_trailing (sd.cpp's DDIM; its timesteps are trailing, diffusers' DDIM config here is leading, so
  the schedule differs), eta 0, CFG 7.5, negative prompt "", threads = the machine's cores, rng "cpu" (sd.cpp's
  port of torch's CPU randn, so the starting noise is torch's for the seed). Images k = seed+k, made one after
  another (batch_count): sd.cpp has no batched UNet call for SD 1.x.
- The pixels will NOT match diffusers': besides the schedule, sd.cpp tokenises with the real CLIP BPE vocabulary
  built into it, while the bench model's folder has a small byte-level tokenizer (other token ids, so another
  text conditioning). The difference is still reported, as a sanity check that the image is not garbage.
JSON: convert_s (only when it converted), import_s, load_s, gen_s (conditioning, steps, decode, writing the
PNGs), per_image_s, images.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WTYPES = ("f32", "f16", "q8_0", "q4_0")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="diffusers SD 1.x folder (converted once to a single file)")
    ap.add_argument("--checkpoint", help="an original-LDM .safetensors to use instead of converting --model")
    ap.add_argument("--wtype", choices=WTYPES, default="f32", help="weight type sd.cpp converts to at load [f32]")
    common.generation_args(ap, "images (batch_count: one after another) [1]")
    ap.add_argument("--sampler", default="ddim_trailing", help="sd.cpp sample method [ddim_trailing]")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="n_threads [all cores]")
    ap.add_argument("--quiet", action="store_true", help="no sd.cpp log")
    a = ap.parse_args(argv)
    import stable_diffusion_cpp
    from stable_diffusion_cpp import StableDiffusion

    import to_single_file

    import_s = time.perf_counter() - T0
    convert_s = None
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
    else:
        ckpt, convert_s = to_single_file.ensure(Path(a.model).expanduser())
        if convert_s is not None:
            print(f"[sdcpp_run] converted {a.model} to {ckpt} in {convert_s:.0f}s", file=sys.stderr, flush=True)
    t = time.perf_counter()
    sd = StableDiffusion(model_path=str(ckpt), wtype=a.wtype, n_threads=a.threads, rng_type="cpu",
                         sampler_rng_type="cpu", verbose=not a.quiet)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    images = sd.generate_image(prompt=a.prompt, negative_prompt="", width=a.width, height=a.height, cfg_scale=7.5,
                               sample_method=a.sampler, sample_steps=a.steps, eta=0.0, seed=a.seed,
                               batch_count=a.batch)
    paths = common.save_images(images, a.out)
    gen_s = time.perf_counter() - t
    if len(paths) != a.batch:
        print(f"sdcpp_run: asked for {a.batch} images, got {len(paths)}", file=sys.stderr)
        return 1
    common.emit({"peer": "sdcpp", "wtype": a.wtype, "sampler": a.sampler, "convert_s": None if convert_s is None
                 else round(convert_s, 2), "import_s": round(import_s, 3), "load_s": round(load_s, 3),
                 "gen_s": round(gen_s, 3), "per_image_s": round(gen_s / len(paths), 3), "images": paths,
                 "threads": a.threads, "checkpoint": str(ckpt), "version": stable_diffusion_cpp.__version__,
                 "steps": a.steps, "height": a.height, "width": a.width, "batch": a.batch})
    return 0


if __name__ == "__main__":
    sys.exit(main())
