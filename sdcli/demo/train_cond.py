"""Image-conditioned demo models, fine-tuned from the txt2img model (see train.py for the recipe).

``pix2pix``: UNet with 8 in-channels (noisy latents + unscaled source-image latents, as
StableDiffusionInstructPix2PixPipeline builds them), trained on world.edit_pair with text and image
conditioning dropped independently (train_instruct_pix2pix.py: p < 0.1 drops text, 0.05 <= p < 0.15 the image).
``depth``: UNet with 5 in-channels (latents + depth map resized bicubically to 16x16 and min-max normalised
to [-1, 1], as StableDiffusionDepth2ImgPipeline.prepare_depth_map does).
``inpaint``: UNet with 9 in-channels (latents + mask at latent size + latents of the masked image, as
StableDiffusionInpaintPipeline builds them for an inpainting UNet), trained on world.inpaint_example.
All start from the txt2img UNet with the extra conv_in channels zero-initialised (or continue a model of their
own kind, ``init``), and fine-tune the text encoder.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from . import train, world
from .train import log

torch.set_num_threads(1)


def widened_unet(in_channels: int, base: Path):
    from diffusers import UNet2DConditionModel

    src = UNet2DConditionModel.from_pretrained(base / "unet")
    unet = train.build_unet(in_channels)
    state = src.state_dict()
    w = torch.zeros_like(unet.conv_in.weight)
    w[:, :4] = state["conv_in.weight"]
    state["conv_in.weight"] = w
    unet.load_state_dict(state)
    return unet


def depth_input(depth: list) -> torch.Tensor:
    """Depth maps ("L" images) -> (N, 1, 16, 16) in [-1, 1], exactly as the depth2img pipeline prepares them."""
    d = torch.from_numpy(np.stack([np.asarray(im, np.float32) / 255 for im in depth])).unsqueeze(1)
    d = F.interpolate(d, size=(world.SIZE // 4, world.SIZE // 4), mode="bicubic", align_corners=False)
    lo, hi = d.amin(dim=(1, 2, 3), keepdim=True), d.amax(dim=(1, 2, 3), keepdim=True)
    return 2.0 * (d - lo) / (hi - lo) - 1.0


IN_CHANNELS = {"pix2pix": 8, "depth": 5, "inpaint": 9}


@torch.no_grad()
def inpaint_inputs(vae, sources: list, masks: list, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask at latent size, scaled latents of the masked image), exactly as StableDiffusionInpaintPipeline makes
    them: the masked pixels set to 0 in [-1, 1], the posterior sampled, the mask resized with "nearest"."""
    m = torch.from_numpy(np.stack(masks)).float().unsqueeze(1)
    x = train.to_tensor(sources) * (m < 0.5)
    z = torch.cat([vae.encode(x[i:i + 256]).latent_dist.sample(gen) for i in range(0, len(x), 256)])
    return F.interpolate(m, size=z.shape[-2:]), z * vae.config.scaling_factor


def _fit(kind: str, steps: int, bs: int, lr: float, seed: int, pool: int, base: Path, out: Path, eval_fn,
         init: Path | None = None, x0_cap: float = 0.0):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    train.seed_all(seed)
    tok = train.tokenizer_folder()
    vae = train.load_vae()
    rng = random.Random(seed)
    t0 = time.time()
    if kind == "pix2pix":
        pairs = [world.edit_pair(rng) for _ in range(pool)]
        cond_img = train.encode(vae, [world.render(s)[0] for s, _, _ in pairs], scaled=False)
        latents = train.encode(vae, [world.render(t)[0] for _, _, t in pairs])
        texts = [p[1] for p in pairs]
    elif kind == "inpaint":
        ex = [world.inpaint_example(rng) for _ in range(pool)]
        mask, masked = inpaint_inputs(vae, [e[2] for e in ex], [e[1] for e in ex], torch.Generator().manual_seed(seed))
        cond_img = torch.cat([mask, masked], 1)
        latents = train.encode(vae, [e[3] for e in ex])
        texts = [e[0] for e in ex]
    else:
        scenes = world.scenes(seed + 200, pool, "train")
        renders = [world.render(s) for s in scenes]
        cond_img = depth_input([r[1] for r in renders])
        latents = train.encode(vae, [r[0] for r in renders])
        texts = scenes
    logf = train.WORK / f"{kind}_log.jsonl"
    log(logf, stage=kind, pool=pool, encode_seconds=round(time.time() - t0, 1), steps=steps, bs=bs, lr=lr)
    start = init or base
    unet = UNet2DConditionModel.from_pretrained(init / "unet") if init else widened_unet(IN_CHANNELS[kind], base)
    text_encoder = CLIPTextModel.from_pretrained(start / "text_encoder")
    noise_sched = train.make_scheduler("ddpm")
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warm = max(1, min(100, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    acc = Accelerator(cpu=True)
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = [rng.randrange(pool) for _ in range(bs)]
        c = cond_img[idx].clone()
        if kind == "pix2pix":
            p = [rng.random() for _ in idx]
            prompts = ["" if q < 0.1 else texts[i] for q, i in zip(p, idx)]
            keep = torch.tensor([0.0 if 0.05 <= q < 0.15 else 1.0 for q in p]).view(-1, 1, 1, 1)
            c = c * keep
        else:
            p_extra = 0.7 if kind == "inpaint" else 0.3  # size and position words kept with this probability
            prompts = ["" if rng.random() < 0.1 else world.random_prompt(rng, texts[i], p_extra, p_extra) for i in idx]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (bs,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(torch.cat([xt, c], 1), t, text_encoder(train.token_ids(tok, prompts))[0]).sample
        w = train.snr_weights(noise_sched, t)
        if x0_cap:  # at least the x0 error's weight at high noise, where copying the conditioning image pays
            ac = noise_sched.alphas_cumprod[t]
            w = torch.maximum(w, ((1 - ac) / ac).clamp(max=x0_cap))
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            log(logf, stage=kind, step=step, loss=round(loss.item(), 5), elapsed=round(time.time() - t0, 1))
    unet, text_encoder = acc.unwrap_model(unet).eval(), acc.unwrap_model(text_encoder).eval()
    pipe = build_pipeline(kind, vae, text_encoder, tok, unet)
    pipe.save_pretrained(out, safe_serialization=True)
    log(logf, stage=kind, done=True, seconds=round(time.time() - t0, 1))
    te = time.time()
    log(logf, stage=kind, eval=eval_fn(pipe), eval_seconds=round(time.time() - te, 1))
    return pipe


def build_pipeline(kind: str, vae, text_encoder, tok, unet):
    import diffusers

    if kind == "inpaint":
        return diffusers.StableDiffusionInpaintPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=train.make_scheduler("ddim"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if kind == "pix2pix":
        return diffusers.StableDiffusionInstructPix2PixPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=train.make_scheduler("ddim"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)  # placeholder estimator (random weights): callers pass depth_map= explicitly
    dpt = DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=37, backbone_out_indices=(0, 1, 2, 3), neck_hidden_sizes=[16, 16, 16, 16],
        fusion_hidden_size=16, head_in_index=-1, is_hybrid=False)).eval()
    proc = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    return diffusers.StableDiffusionDepth2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=train.make_scheduler("pndm"),
        depth_estimator=dpt, feature_extractor=proc)


@torch.no_grad()
def eval_pix2pix(pipe, n: int = 60, steps: int = 20, guidance: float = 4.0) -> dict:
    """Held-out edits (target triple held out): checker score of the edited image against the target prompt."""
    from . import checker

    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(999)
    pairs = [world.edit_pair(rng, "heldout") for _ in range(n)]
    scores = []
    for i, (src, text, tgt) in enumerate(pairs):
        im = pipe(text, image=world.render(src)[0], num_inference_steps=steps, guidance_scale=guidance,
                  image_guidance_scale=1.5, generator=torch.Generator().manual_seed(i)).images[0]
        scores.append(checker.check(im, world.prompt(tgt)))
    return {k: round(v, 3) for k, v in checker.summarize(scores).items()}


@torch.no_grad()
def eval_depth(pipe, n: int = 60, steps: int = 50) -> dict:
    """Held-out scenes: prompt without size/position, depth map of the scene; shape/size/pos must follow the depth."""
    from . import checker

    pipe.set_progress_bar_config(disable=True)
    scores = []
    for i, (_, s) in enumerate(world.heldout_prompts(n, seed=777)):
        depth = torch.from_numpy(np.asarray(world.render(s)[1], np.float32) / 255)[None]
        init = world.render(dict(s, shape="circle", color=s["bg"]))[0]  # a flat background picture
        im = pipe(world.prompt(s, False, False), image=init, depth_map=depth, strength=1.0,
                  num_inference_steps=steps, generator=torch.Generator().manual_seed(i)).images[0]
        scores.append(checker.check(im, world.prompt(s)))
    return {k: round(v, 3) for k, v in checker.summarize(scores).items()}


@torch.no_grad()
def eval_inpaint(pipe, n: int = 60, steps: int = 50, guidance: float = 4.0) -> dict:
    """Held-out scenes, right half masked, a new background asked for: % with the prompt's colour inside (the
    median of the masked half) and the mean absolute change outside (pipeline output, before any paste-back)."""
    from PIL import Image

    from . import checker

    pipe.set_progress_bar_config(disable=True)
    rng = random.Random(6)
    mask = np.zeros((world.SIZE, world.SIZE), np.uint8)
    mask[:, world.SIZE // 2:] = 255
    inside, outside = [], []
    for i in range(n):
        src = dict(world.sample_scene(rng, "any"), pos="left", size="small")
        new_bg = rng.choice([c for c in world.COLORS if c not in (src["bg"], src["color"])])
        before = world.render(src)[0]
        im = pipe(world.prompt(dict(src, bg=new_bg), False, False), image=before, mask_image=Image.fromarray(mask),
                  num_inference_steps=steps, guidance_scale=guidance, height=world.SIZE, width=world.SIZE,
                  generator=torch.Generator().manual_seed(i)).images[0]
        a, b = np.asarray(im, np.int16), np.asarray(before, np.int16)
        outside.append(float(np.abs(a[:, :28] - b[:, :28]).mean()))
        inside.append(checker.nearest_color(np.median(a[:, 36:].reshape(-1, 3), 0)) == new_bg)
    return {"inside": round(float(np.mean(inside)), 3), "outside_abs": round(float(np.mean(outside)), 2)}


def train_pix2pix(steps: int = 800, bs: int = 64, lr: float = 5e-4, seed: int = 1, pool: int = 8000, base: Path | None = None,
                  init: Path | None = None, out: Path | None = None, x0_cap: float = 0.0):
    return _fit("pix2pix", steps, bs, lr, seed, pool, base or train.MODELS / "txt2img", out or train.MODELS / "instruct-pix2pix",
                eval_pix2pix, init, x0_cap)


def train_inpaint(steps: int = 1000, bs: int = 64, lr: float = 5e-4, seed: int = 5, pool: int = 8000, base: Path | None = None,
                  init: Path | None = None, out: Path | None = None, x0_cap: float = 0.0):
    return _fit("inpaint", steps, bs, lr, seed, pool, base or train.MODELS / "txt2img", out or train.MODELS / "inpaint",
                eval_inpaint, init, x0_cap)


def train_depth(steps: int = 600, bs: int = 64, lr: float = 5e-4, seed: int = 2, pool: int = 8000, base: Path | None = None,
                init: Path | None = None, out: Path | None = None, x0_cap: float = 0.0):
    return _fit("depth", steps, bs, lr, seed, pool, base or train.MODELS / "txt2img", out or train.MODELS / "depth2img",
                eval_depth, init, x0_cap)
