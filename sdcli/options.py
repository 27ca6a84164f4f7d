"""The command-line options of the generating subcommands, as data: one shared table, each subcommand's own
options, and the original scripts' other flags (compat.py). cli.py turns them into Typer options; ``{default}``
in a help text becomes the subcommand's default (config.TASK_DEFAULTS)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import compat, schedulers


@dataclass(frozen=True)
class Opt:
    """One option: its Python (config) name, value type, spellings and help. ``default`` False: a plain
    switch that is off unless given; None: unset, so configs and defaults decide."""

    name: str
    kind: type  # str, int, float, bool, or list (repeatable text)
    spellings: tuple
    help: str
    default: Any = None


# Options that are not config keys.
CONFIG_FILES = Opt("config", list, ("--config", "-c",), "Run config YAML (repeatable; later wins), a preset name from configs/; for a single-file model also its diffusers folder or original LDM inference YAML.")
SETS = Opt("set_", list, ("--set",), "Override one config key: --set steps=30 (repeatable).")
SHARED = [
    Opt("prompt", str, ("--prompt", "-p",), "The prompt (default: the original scripts' one)."),
    Opt("from_file", str, ("--from-file", "--from_file",), "Prompt file: .txt (one per line), .jsonl, .yaml or .csv with per-row settings."),
    Opt("negative_prompt", str, ("--negative-prompt", "--negative_prompt",), "What not to draw."),
    Opt("repeat", int, ("--repeat",), "With --from-file: images per line per iteration."),
    Opt("model", str, ("--model", "--ckpt", "-m",), "Hub id, diffusers folder, single .safetensors file, or 'tiny'."),
    Opt("model_config", str, ("--model-config",), "For a single-file model: a local diffusers folder or an LDM inference YAML."),
    CONFIG_FILES,
    SETS,
    Opt("outdir", str, ("--outdir", "-o",), "Output folder (default outputs/<task>-samples)."),
    Opt("steps", int, ("--steps", "--ddim_steps", "--ddim-steps",), "Denoising steps [{default}]."),
    Opt("scale", float, ("--scale", "--cfg-scale",), "Classifier-free guidance scale [{default}]."),
    Opt("H", int, ("--H", "--height",), "Height in pixels, multiple of 8 [{default}]."),
    Opt("W", int, ("--W", "--width",), "Width in pixels, multiple of 8 [{default}]."),
    Opt("n_samples", int, ("--n-samples", "--n_samples",), "Batch size [{default}]."),
    Opt("n_iter", int, ("--n-iter", "--n_iter",), "Repeat the whole batch list N times [{default}]."),
    Opt("n_rows", int, ("--n-rows", "--n_rows",), "Images per grid row [n_samples]."),
    Opt("seed", int, ("--seed",), "Base seed: image k of the run uses seed+k [{default}]."),
    Opt("fixed_code", bool, ("--fixed-code", "--fixed_code",), "One starting noise for every batch."),
    Opt("scheduler", str, ("--scheduler", "--sampler",), f"{', '.join(schedulers.TABLE)}, or model (the model's own) [{{default}}]; also {', '.join(schedulers.ALIASES)}."),
    Opt("eta", float, ("--eta", "--ddim_eta", "--ddim-eta",), "DDIM eta (0 = deterministic; the other schedulers ignore it, and record eta null) [{default}]."),
    Opt("lora", list, ("--lora",), "LoRA file PATH[:WEIGHT] (repeatable; .safetensors in the diffusers, kohya or A1111 layout)."),
    Opt("lora_dir", str, ("--lora-dir",), "Folder where <lora:NAME:WEIGHT> prompt tags find NAME.safetensors."),
    Opt("fuse_lora", bool, ("--fuse-lora",), "Merge the LoRAs into the weights once: faster steps, one LoRA set per run."),
    Opt("embedding", list, ("--embedding",), "Textual-inversion embedding PATH[:TOKEN] (repeatable; token: the file's own, else its name)."),
    Opt("embedding_dir", str, ("--embedding-dir",), "Folder of embeddings: NAME.safetensors is used where NAME appears in a prompt."),
    Opt("clip_skip", int, ("--clip-skip",), "Take the text encoder's N-th layer from the end (A1111's Clip skip; 1 = last) [1]."),
    Opt("prompt_syntax", str, ("--prompt-syntax",), "a1111 ((word:1.3), (word), [word], BREAK; long prompts in 75-token chunks), compel, or none (plain, cut at 75 tokens) [a1111]."),
    Opt("device", str, ("--device",), "auto, cpu, cuda, cuda:N or mps [auto]."),
    Opt("precision", str, ("--precision",), "auto, fp32, fp16, bf16 (autocast = auto, full = fp32) [auto]."),
    Opt("backend", str, ("--backend",), "What runs the UNet and the VAE: torch, openvino (CPU; pip install 'sdcli[openvino]') or auto (openvino on the CPU for a UNet of 256 MiB or more when installed, else torch) [auto]."),
    Opt("skip_grid", bool, ("--skip-grid", "--skip_grid",), "Do not write the grid."),
    Opt("skip_save", bool, ("--skip-save", "--skip_save",), "Do not write individual samples."),
    Opt("format", str, ("--format",), "Image files of samples and grids: png, jpg or webp (metadata in EXIF as A1111 writes it) [png]."),
    Opt("quality", int, ("--quality",), "JPEG/WebP quality 1-100; WebP at 100 is lossless (keeps the watermark) [95]."),
    Opt("safety_checker", bool, ("--safety-checker/--no-safety-checker",), "Run the safety checker [on]."),
    Opt("safety_checker_source", str, ("--safety-checker-source",), "Folder or hub id of the safety checker [the model's own]."),
    Opt("watermark", bool, ("--watermark/--no-watermark",), "Invisible watermark [on]."),
    Opt("watermark_text", str, ("--watermark-text",), "Watermark payload [SDV2]."),
    Opt("allow_unsafe_pickle", bool, ("--allow-unsafe-pickle",), "Allow .ckpt/.pt pickle checkpoints (they can run code)."),
    Opt("variant", str, ("--variant",), "Weights variant to load, e.g. fp16 (*.fp16.safetensors) [the only one there, else the plain weights]."),
    Opt("quiet", bool, ("--quiet", "-q",), "Only warnings and errors on stderr."),
    Opt("attention_slicing", bool, ("--attention-slicing",), "Attention in slices: less memory, usually slower."),
    Opt("vae_slicing", bool, ("--vae-slicing",), "Decode a batch one image at a time (less memory)."),
    Opt("vae_tiling", bool, ("--vae-tiling",), "Decode in tiles: large images in little memory."),
    Opt("offload", str, ("--offload",), "none, model or sequential: keep idle parts on the CPU (CUDA only) [none]."),
    Opt("channels_last", bool, ("--channels-last",), "Channels-last memory layout for UNet and VAE."),
    Opt("compile", bool, ("--compile",), "torch.compile the UNet: slow first batch, faster after."),
    Opt("resume", bool, ("--resume",), "Skip jobs whose image is already complete in --outdir (same command)."),
    Opt("shard", str, ("--shard",), "Make share K of N of the jobs: K/N, or auto (Slurm array, or auto/N for a Kubernetes indexed Job). Launchers (torchrun, accelerate, srun) need no flag."),
    Opt("fail_fast", bool, ("--fail-fast",), "Stop at the first failed item (default: record it, go on, exit 1)."),
    Opt("json", bool, ("--json",), "Print a JSON summary on stdout at the end (logs stay on stderr).", default=False),
    Opt("dry_run", bool, ("--dry-run",), "Check everything and list the jobs, without loading the model.", default=False),
    Opt("debug", bool, ("--debug",), "Show tracebacks.", default=False),
] + [Opt(f.name, f.kind, f.spellings, f.help, default=False if f.kind is bool else None)
     for f in compat.FLAGS]  # the original scripts' other flags (compat.py)
NOT_CONFIG = {"config", "set_", "dry_run", "debug", "json"}


def _image(*names: str) -> Opt:
    return Opt("image", str, ("--image", *names), "Input image: a file, a folder of images, or a quoted glob.")


def _strength() -> Opt:
    return Opt("strength", float, ("--strength",), "How much to change the image, 0..1 [{default}].")


RESIZE = Opt("resize_mode", str, ("--resize-mode",), "Bring inputs to the output size: crop (keep aspect, cut the overflow) or resize (stretch) [crop].")

# subcommand -> (help, its own options: they may replace a shared one of the same name, to add spellings)
COMMANDS: dict[str, tuple[str, list[Opt]]] = {
    "txt2img": ("Generate images from text prompts (CompVis scripts/txt2img.py options accepted).", []),
    "img2img": ("Change an image guided by a prompt (CompVis scripts/img2img.py options accepted).", [
    _image("--init-img", "--init_img"), _strength(), RESIZE]),
    "inpaint": ("Repaint the white part of a mask.", [
    _image(), Opt("mask", str, ("--mask",), "Mask image, white = repaint (any mode; same size as the image)."),
    Opt("indir", str, ("--indir",), "Folder of x.png + x_mask.png pairs, as CompVis inpaint.py: one image per pair, written as OUTDIR/x.png, no grid."),
    Opt("paste_back", bool, ("--paste-back/--no-paste-back",), "Put the input's unmasked pixels back into the result, as CompVis inpaint.py [on]."),
    Opt("mask_blur", int, ("--mask-blur",), "Feather the paste-back edge by N pixels (0: the hard edge of inpaint.py) [{default}]."),
    _strength(), RESIZE]),
    "depth2img": ("Make a new image with the depth of the input (SD 2 depth model).", [
    _image(), _strength(),
    Opt("depth_map", str, ("--depth-map",), "Depth map image (white = near) instead of estimating one."),
    Opt("save_depth", bool, ("--save-depth",), "Save the depth map used beside each sample (NNNNN-depth.png)."),
    RESIZE]),
    "instruct-edit": ("Edit an image by an instruction (InstructPix2Pix; edit_cli.py options accepted).", [
    _image("--input"),
    Opt("prompt", str, ("--prompt", "--edit", "-p",), "The edit instruction, e.g. 'make it snowy'."),
    Opt("scale", float, ("--scale", "--cfg-text",), "Text guidance scale [{default}]."),
    Opt("image_guidance_scale", float, ("--image-guidance-scale", "--cfg-image",), "Image guidance scale, >= 1 [{default}]."),
    Opt("resolution", int, ("--resolution",), "Longest output side, rounded to 64 as edit_cli.py [input size]."),
    Opt("output", str, ("--output",), "Write the single result to this file (.png, .jpg, .webp)."),
    Opt("manifest", bool, ("--manifest",), "With --output: also append its record to manifest.jsonl beside it."),
    RESIZE]),
}
