"""Train the demo model family from scratch on the CPU, with diffusers' text-to-image recipe.

Stages: ``vae`` (AutoencoderKL, 64 px -> 4x16x16 latents), ``txt2img`` (UNet 4 in-channels + a small
CLIPTextModel trained jointly, 10% empty captions for classifier-free guidance), ``pix2pix`` (UNet with 8
in-channels started from the txt2img UNet, text and image conditioning dropped independently) and ``depth``
(UNet with 5 in-channels, the depth map normalised to [-1, 1] as StableDiffusionDepth2ImgPipeline does).
Everything is seeded; torch runs on one thread.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from . import tokenizer as tok_mod
from . import world

torch.set_num_threads(1)
MODELS = Path("demo-build/models")  # the finished family (set_paths)
WORK = Path("demo-build/work")  # intermediate checkpoints, latent caches, logs


def set_paths(work: Path, models: Path) -> None:
    global WORK, MODELS
    WORK, MODELS = Path(work), Path(models)
SCHED = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def log(path: Path, **row) -> None:
    row["time"] = round(time.time(), 1)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> float tensor in [-1, 1], NCHW."""
    a = np.stack([np.asarray(im) for im in images]).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(a).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------- models
def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=1, sample_size=world.SIZE,
                         mid_block_add_attention=False)


def build_text_encoder(vocab_size: int, tok, tok_std: float = 0.0):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = CLIPTextModel(cfg)
    if tok_std:  # distinct token embeddings from the start (default init std 0.02 leaves them nearly equal)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=tok_std,
                              generator=torch.Generator().manual_seed(7))
    return model


def build_unet(in_channels: int = 4, deep: bool = False):
    """(32,64,64), cross-attention at 8x8 and 4x4; ``deep`` adds a 4th level (64 ch, 2x2) with cross-attention."""
    from diffusers import UNet2DConditionModel

    n = 4 if deep else 3
    return UNet2DConditionModel(
        sample_size=world.SIZE // 4, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64, 64, 64)[:n], layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=4)


# ------------------------------------------------------------------------------------------------- VAE
def train_vae(steps: int = 1800, bs: int = 16, lr: float = 2e-3, seed: int = 0, out: Path | None = None,
              init: Path | None = None, edge_weight: float = 0.0):
    """Reconstruction (MSE + L1, optionally weighted up on the shape and its edges) + small KL."""
    out = out or WORK / "vae"
    seed_all(seed)
    acc = Accelerator(cpu=True)
    vae = load_vae(init).train().requires_grad_(True) if init else build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    vae, opt = acc.prepare(vae, opt)
    rng = random.Random(seed)
    logf = out.parent / "vae_log.jsonl"
    t0 = time.time()
    for step in range(steps):
        renders = [world.render(s) for s in (world.sample_scene(rng) for _ in range(bs))]
        x = to_tensor([r[0] for r in renders])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean + 0.05 * torch.randn_like(post.mean)).sample  # near-deterministic AE
        w = torch.ones_like(x[:, :1])
        if edge_weight:
            m = torch.from_numpy(np.stack([r[2] for r in renders])).float().unsqueeze(1)
            edge = F.max_pool2d(m, 3, 1, 1) + F.max_pool2d(-m, 3, 1, 1)  # dilation - erosion
            w = 1 + edge_weight * (0.3 * m + edge)
        err = (rec - x) ** 2 + 0.5 * (rec - x).abs()
        l_rec = (err * w).mean() / w.mean()
        l_kl = post.kl().mean() / (4 * 16 * 16)
        loss = l_rec + 1e-4 * l_kl
        acc.backward(loss)
        opt.step(), sched.step(), opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            log(logf, stage="vae", step=step, loss=round(loss.item(), 5), rec=round(l_rec.item(), 5),
                kl=round(l_kl.item(), 3), elapsed=round(time.time() - t0, 1))
    vae = acc.unwrap_model(vae).eval()
    # scaling factor so that latents have unit variance, as SD's 0.18215
    rng = random.Random(seed + 1)
    with torch.no_grad():
        x = to_tensor([world.render(s)[0] for s in (world.sample_scene(rng) for _ in range(512))])
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample.clamp(-1, 1)
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    psnr = 10 * math.log10(4 / F.mse_loss(rec, x).item())
    log(logf, stage="vae", done=True, psnr=round(psnr, 2), scaling_factor=float(1 / z.std()),
        seconds=round(time.time() - t0, 1))
    vae.save_pretrained(out, safe_serialization=True)
    return vae


# ---------------------------------------------------------------------------------------------- shared
def load_vae(path: Path | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path or WORK / "vae").eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: list, bs: int = 256, scaled: bool = True) -> torch.Tensor:
    """Posterior means of images (times the scaling factor when ``scaled``)."""
    out = [vae.encode(to_tensor(images[i:i + bs])).latent_dist.mean for i in range(0, len(images), bs)]
    z = torch.cat(out)
    return z * vae.config.scaling_factor if scaled else z


def token_ids(tok, prompts: list[str]) -> torch.Tensor:
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids


def make_scheduler(kind: str = "pndm", zero_snr: bool = False):
    """``zero_snr``: betas rescaled to zero terminal SNR, v-prediction, trailing timesteps (Lin et al. 2023)."""
    from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

    zs = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing") if zero_snr else {}
    if kind == "ddpm":
        return DDPMScheduler(**SCHED, **zs)
    if kind == "ddim":
        # steps_offset is ignored by "trailing" but kept at 1 (the pipeline warns otherwise)
        return DDIMScheduler(**SCHED, **zs, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return PNDMScheduler(**SCHED, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)


def snr_weights(noise_sched, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights for epsilon prediction (as in train_text_to_image.py --snr_gamma).
    For v-prediction: x0-weight min(snr + 1, gamma), i.e. plain v-MSE clamped at low noise (the script's
    min(snr, gamma) / (snr + 1) would give the zero-SNR step, the one that must read the layout from the text, weight 0)."""
    ac = noise_sched.alphas_cumprod[t]
    snr = ac / (1 - ac)
    if noise_sched.config.prediction_type == "v_prediction":
        return torch.clamp(snr + 1, max=gamma) / (snr + 1)
    return torch.clamp(snr, max=gamma) / snr


def txt2img_pipeline(vae, text_encoder, tok, unet, scheduler: str = "pndm", zero_snr: bool = False):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=make_scheduler(scheduler, zero_snr), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def tokenizer_folder():
    path = WORK / "tokenizer"
    tok_mod.write_tokenizer(path)
    return tok_mod.load(path)


# --------------------------------------------------------------------------------------------- txt2img
def train_txt2img(steps: int = 2000, bs: int = 64, lr: float = 1e-3, seed: int = 0, pool: int = 20000,
                  eval_every: int = 500, eval_n: int = 60, out: Path | None = None, ema: float = 0.0,
                  init: Path | None = None, tag: str = "txt2img", horizon: int | None = None,
                  deep: bool = False, zero_snr: bool = False, tok_std: float = 0.0, p_pos: float = 0.7,
                  hi_t: float = 0.0, diag: bool = False, snr_gamma: float = 5.0, x0_cap: float = 0.0):
    """Train (or, with ``init`` = a saved txt2img folder, continue training) the UNet and the text encoder.
    ``horizon``: length of the warmup+cosine LR schedule (default ``steps``; a larger one = stop early on the
    schedule of a longer run). ``deep``/``zero_snr``: see build_unet / make_scheduler. ``x0_cap``: weight the
    epsilon loss by at least min(1/snr, x0_cap), i.e. the x0 error, at high noise, where the layout is decided
    (plain epsilon-MSE scales an x0 error there by ~0.07: the position words get almost no gradient)."""
    from diffusers.training_utils import EMAModel

    from . import evaluate

    out = out or MODELS / "txt2img"

    seed_all(seed)
    tok = tokenizer_folder()
    vae = load_vae()
    rng = random.Random(seed)
    pool_scenes = world.scenes(seed + 100, pool, "train")
    t0 = time.time()
    cache = WORK / f"latents_seed{seed + 100}_{pool}.pt"  # same VAE + same pool -> same latents
    if cache.exists() and cache.stat().st_mtime > (WORK / "vae" / "diffusion_pytorch_model.safetensors").stat().st_mtime:
        latents = torch.load(cache)
    else:
        latents = encode(vae, [world.render(s)[0] for s in pool_scenes])
        torch.save(latents, cache)
    logf = WORK / f"{tag}_log.jsonl"
    log(logf, stage="txt2img", pool=pool, encode_seconds=round(time.time() - t0, 1), steps=steps, bs=bs, lr=lr, ema=ema)
    if init:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(init / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(init / "unet")
    else:
        text_encoder, unet = build_text_encoder(len(tok), tok, tok_std), build_unet(4, deep)
    noise_sched = make_scheduler("ddpm", zero_snr)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    horizon = horizon or steps
    warm = max(1, min(200, horizon // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, horizon) / horizon)))
    acc = Accelerator(cpu=True)
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    ema_model = EMAModel(unet.parameters(), decay=ema) if ema else None
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps + 1):
        if step % eval_every == 0 and step > 0 or step == steps:
            if ema_model:
                ema_model.store(unet.parameters())
                ema_model.copy_to(unet.parameters())
            pipe = txt2img_pipeline(vae, acc.unwrap_model(text_encoder), tok, acc.unwrap_model(unet), "ddim", zero_snr)
            te = time.time()
            score = evaluate.adherence(pipe, evaluate.eval_prompts()[:eval_n], steps=20)
            log(logf, stage="txt2img", step=step, eval_steps=20, n=eval_n, **score,
                eval_seconds=round(time.time() - te, 1), elapsed=round(time.time() - t0, 1))
            if diag:
                from . import diag_position
                pipe.save_pretrained(out / "last", safe_serialization=True)
                log(logf, stage="diag", step=step, **diag_position.main(str(out / "last")))
            if ema_model and step < steps:
                ema_model.restore(unet.parameters())
            if step == steps:
                break
        idx = [rng.randrange(pool) for _ in range(bs)]
        prompts = ["" if rng.random() < 0.1 else world.random_prompt(rng, pool_scenes[i], p_pos=p_pos) for i in idx]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (bs,), generator=gen)
        if hi_t:  # oversample the high-noise steps, where the layout must come from the text
            hi = torch.rand(bs, generator=gen) < hi_t
            t = torch.where(hi, torch.randint(800, 1000, (bs,), generator=gen), t)
        xt = noise_sched.add_noise(x0, noise, t)
        cond = text_encoder(token_ids(tok, prompts))[0]
        pred = unet(xt, t, cond).sample
        target = noise_sched.get_velocity(x0, noise, t) if zero_snr else noise
        w = snr_weights(noise_sched, t, snr_gamma) if snr_gamma else torch.ones(bs)  # 0: plain MSE
        if x0_cap:
            ac = noise_sched.alphas_cumprod[t]
            w = torch.maximum(w, ((1 - ac) / ac).clamp(max=x0_cap))
        loss = (F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3)) * w).mean()
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad()
        if ema_model:
            ema_model.step(unet.parameters())
        if step % 100 == 0:
            log(logf, stage="txt2img", step=step, loss=round(loss.item(), 5), lr=sched.get_last_lr()[0],
                elapsed=round(time.time() - t0, 1))
    unet, text_encoder = acc.unwrap_model(unet), acc.unwrap_model(text_encoder)
    pipe = txt2img_pipeline(vae, text_encoder, tok, unet, "ddim", zero_snr)  # PNDM+CFG 7.5 gave artefacts
    pipe.save_pretrained(out, safe_serialization=True)
    log(logf, stage="txt2img", done=True, seconds=round(time.time() - t0, 1))
    return pipe
