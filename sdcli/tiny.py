"""Tiny random-weight pipelines for every task, built locally and saved with ``save_pretrained``.

They make noise, not art, but they load through exactly the code path a real model takes, so tests,
CI and cron health checks (``--model tiny``) can run every subcommand offline in seconds.

Layout of a built model folder: the diffusers pipeline (``model_index.json`` + component folders)
plus ``safety_checker/`` and ``feature_extractor/`` (a tiny CLIP safety checker), also for depth2img,
whose pipeline class has no checker slot: sdcli loads the checker itself (see ``postprocess.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Which tiny model folder serves which task. txt2img and img2img share one model, as real SD models do.
TINY_KINDS = {
    "txt2img": "txt2img",
    "img2img": "txt2img",
    "inpaint": "inpaint",
    "depth2img": "depth2img",
    "instruct-edit": "instruct-pix2pix",
}
UNET_IN_CHANNELS = {"txt2img": 4, "inpaint": 9, "depth2img": 5, "instruct-pix2pix": 8}
PIPELINE_CLASSES = {
    "txt2img": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth2img": "StableDiffusionDepth2ImgPipeline",
    "instruct-pix2pix": "StableDiffusionInstructPix2PixPipeline",
}
BUILD_VERSION = "3"  # bump when the tiny architecture changes, so cached builds are rebuilt


def cache_root() -> Path:
    from .files import cache_home

    return cache_home() / "tiny" / f"v{BUILD_VERSION}"


def byte_alphabet() -> dict[int, str]:
    """CLIP's (and GPT-2's) byte-level BPE alphabet: byte -> character, in CLIP's vocabulary order (the
    printable bytes first, then the others mapped above U+0100). Also used by the demo model's tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with only byte-level characters: vocab.json + merges.txt with no merges."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(byte_alphabet().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def _components(kind: str, flag_everything: bool = False):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,  # x8 (VAE) -> 256 px default size, large enough for the watermark
        in_channels=UNET_IN_CHANNELS[kind],
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=kind == "depth2img",
    )
    torch.manual_seed(0)
    # Four levels, as SD's VAE: a scale factor of 8, so latents (and attention) stay small.
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64, 64],
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=256,
    )
    # The scheduler config of the SD 1.x releases.
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
            layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
            vocab_size=len(tokenizer), max_position_embeddings=77,
        )
    )
    torch.manual_seed(0)
    checker_config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=4),
        projection_dim=32,
    )
    safety_checker = StableDiffusionSafetyChecker(checker_config).eval()
    if flag_everything:
        # score = cos - threshold: with negative thresholds every image is flagged.
        with torch.no_grad():
            safety_checker.concept_embeds_weights.fill_(-1.0)
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    return parts, safety_checker, feature_extractor


def _depth_estimator():
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(
        image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=37, backbone_out_indices=(0, 1, 2, 3),
        neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, head_in_index=-1, is_hybrid=False,
    )
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    return DPTForDepthEstimation(config).eval(), processor


def build(kind: str, folder: str | os.PathLike, flag_everything: bool = False) -> Path:
    """Build the tiny model of ``kind`` (a key of PIPELINE_CLASSES) and save it to ``folder``."""
    import diffusers

    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"unknown tiny model kind {kind!r}; one of {', '.join(PIPELINE_CLASSES)}")
    folder = Path(folder)
    parts, safety_checker, clip_processor = _components(kind, flag_everything)
    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    if kind == "depth2img":
        depth_estimator, dpt_processor = _depth_estimator()
        pipe = cls(**parts, depth_estimator=depth_estimator, feature_extractor=dpt_processor)
    else:
        pipe = cls(**parts, safety_checker=safety_checker, feature_extractor=clip_processor,
                   requires_safety_checker=True)
    pipe.save_pretrained(folder)
    if kind == "depth2img":
        # The depth pipeline has no checker slot: keep a checker beside it, as sdcli loads it itself.
        safety_checker.save_pretrained(folder / "safety_checker")
        clip_processor.save_pretrained(folder / "safety_feature_extractor")
    return folder


def folder(task: str) -> Path:
    """Where the tiny model for ``task`` is cached (it may not be built yet)."""
    return cache_root() / TINY_KINDS[task]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ensure(task: str) -> Path:
    """The cached tiny model folder for ``task``, built on first use (safe when runs race)."""
    from filelock import FileLock

    from .libraries import quiet_libraries

    target = folder(task)
    if (target / "model_index.json").is_file():
        return target
    quiet_libraries()
    kind = TINY_KINDS[task]
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f".{kind}.lock"))
        lock.acquire()
    except OSError as e:
        from .errors import UsageError

        raise UsageError(f"--model tiny: cannot build it in the cache {root} ({e.strerror}); set SDCLI_CACHE to "
                         "a folder you can write to") from None
    try:
        if (target / "model_index.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
        try:
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a cache folder gets the umask's mode
            build(kind, tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        lock.release()
    return target
