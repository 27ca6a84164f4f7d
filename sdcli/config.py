"""The run configuration: one typed schema holding every default, and its load/merge/validate.

Precedence, lowest first: schema defaults < ``--config`` YAML files (in order) < ``--set key=value``
dot-lists < explicit command-line flags. Per-row values in a prompt file override the result for that
row only (``prompts.py``). Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from . import configfiles, limits, schedulers
from .errors import UsageError, suggest


PRECISIONS = {"auto": "auto", "autocast": "auto", "fp32": "fp32", "full": "fp32", "float32": "fp32",
              "fp16": "fp16", "half": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16"}
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class RunConfig:
    """Every setting of a generating run, with its default. YAML keys and ``--set`` keys are these names."""

    # What to run
    task: str = "txt2img"
    model: Optional[str] = None  # hub id, diffusers folder, single .safetensors, or "tiny"; None: the task's default
    model_config: Optional[str] = None  # for a single-file model: local diffusers folder or original LDM YAML
    allow_unsafe_pickle: bool = False  # allow loading .ckpt/.pt pickles (can run arbitrary code!)
    variant: Optional[str] = None  # weights variant (fp16: *.fp16.safetensors); None: the only one there, else plain

    # Prompts
    prompt: Optional[str] = None  # None (and no from_file): the original scripts' default prompt
    from_file: Optional[str] = None
    negative_prompt: str = ""
    repeat: int = 1  # with from_file: repeat each line this many times

    # Sampling
    steps: int = 50
    scale: float = 7.5
    H: Optional[int] = None  # None: the model's default size
    W: Optional[int] = None
    n_samples: int = 3  # batch size
    n_iter: int = 2
    n_rows: int = 0  # images per grid row; 0: n_samples
    seed: Optional[int] = 42  # None: a random seed, printed and recorded (instruct-edit, as edit_cli.py)
    fixed_code: bool = False
    scheduler: str = "ddim"
    eta: float = 0.0

    # Image-conditioned tasks (img2img, inpaint, depth2img, instruct-edit)
    image: Optional[str] = None  # input image: a file, a folder of images, or a glob
    mask: Optional[str] = None  # inpaint: white = repaint
    indir: Optional[str] = None  # inpaint: folder of x.png + x_mask.png pairs
    strength: Optional[float] = None  # None: the task's default (img2img 0.75, inpaint 1.0, depth2img 0.8)
    depth_map: Optional[str] = None  # depth2img: use this depth map instead of estimating one
    save_depth: bool = False  # depth2img: save the depth map used beside each sample
    image_guidance_scale: float = 1.5  # instruct-edit
    resize_mode: str = "crop"  # crop (scale + center-crop, keeps aspect) or resize (stretch)
    resolution: Optional[int] = None  # instruct-edit: longest side, rounded to 64 as edit_cli.py did
    output: Optional[str] = None  # instruct-edit: write the single result to this file
    paste_back: bool = True  # inpaint: unmasked pixels are the input's (CompVis inpaint.py composited them back)
    mask_blur: int = 4  # inpaint: feather the paste-back edge by this many pixels (A1111's "Mask blur")

    # The model's parts and geometry (the original scripts' --vae-ckpt, --C, --f)
    vae: Optional[str] = None  # a VAE instead of the model's own: diffusers folder, single file or hub id
    latent_channels: Optional[int] = None  # --C: checked against the model once loaded (None: no check)
    downsampling_factor: Optional[int] = None  # --f: the VAE's scale factor, checked the same way

    # What the run adds to the model, and how prompts are read (README "LoRA, embeddings and prompt weighting")
    lora: List[str] = field(default_factory=list)  # LoRA files, PATH[:WEIGHT]
    lora_dir: Optional[str] = None  # where <lora:NAME:WEIGHT> prompt tags find NAME.safetensors
    fuse_lora: bool = False  # merge the run's one LoRA set into the weights (faster steps)
    embedding: List[str] = field(default_factory=list)  # textual-inversion files, PATH[:TOKEN]
    embedding_dir: Optional[str] = None  # NAME.safetensors used where NAME appears in a prompt
    clip_skip: int = 1  # A1111's Clip skip: 1 = the text encoder's last layer, 2 = the one before ...
    prompt_syntax: str = "a1111"  # a1111, compel or none (plain text, cut at the text encoder's window)

    # Where to run
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"  # torch, openvino (UNet and VAE through OpenVINO, CPU) or auto (backends.py)

    # Outputs
    outdir: Optional[str] = None  # None: outputs/<task>-samples
    skip_grid: bool = False
    skip_save: bool = False
    manifest: bool = False  # instruct-edit --output: also append its line to manifest.jsonl beside the file
    format: str = "png"  # samples and grids: png, jpg or webp (metadata in EXIF for jpg/webp); --output: its suffix
    quality: int = 95  # jpg/webp quality, 1-100 (JPEG keeps full chroma for the watermark)

    # Safety checker and watermark
    safety_checker: bool = True
    safety_checker_source: Optional[str] = None  # None: the model's own safety_checker/
    watermark: bool = True
    watermark_text: str = "SDV2"

    # Speed and memory (README "Speed and memory"; measured by make bench)
    attention_slicing: bool = False  # compute attention in slices: less memory, usually slower
    vae_slicing: bool = False  # decode a batch one image at a time
    vae_tiling: bool = False  # decode/encode in tiles: large images in little memory
    offload: str = "none"  # none, model or sequential: move idle parts to the CPU (CUDA only)
    channels_last: bool = False  # channels-last memory layout for UNet and VAE
    compile: bool = False  # torch.compile the UNet (slow first batch; on CPU with inductor freezing)

    # Batch behaviour
    resume: bool = False  # skip jobs whose image is already complete in outdir
    fail_fast: bool = False  # stop at the first failed item (default: record it and go on)
    shard: Optional[str] = None  # K/N, auto or auto/N: make only share K of N (shards.py; launchers set it too)

    # Terminal
    quiet: bool = False


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
# Keys of a prompt-file row that override the config for that row.
ROW_KEYS = {"prompt", "negative_prompt", "seed", "steps", "scale", "W", "H", "scheduler", "eta",
            "lora", "embedding", "vae", "clip_skip", "prompt_syntax"}
LIST_KEYS = ("lora", "embedding")  # text lists: --set lora=a.safetensors is a list of one
ROW_ALIASES = {"width": "W", "height": "H", "ddim_steps": "steps", "cfg_scale": "scale", "negative": "negative_prompt",
               "init_img": "image", "init_image": "image", "input": "image", "mask_image": "mask",
               "edit": "prompt", "cfg_text": "scale", "cfg_image": "image_guidance_scale"}
RESIZE_MODES = ("crop", "resize")
IMAGE_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp"}  # --format and its aliases
TASK_NAMES = ("txt2img", "img2img", "inpaint", "depth2img", "instruct-edit")  # tasks.TASKS has the details
OFFLOADS = ("none", "model", "sequential")
BACKENDS = ("torch", "openvino", "auto")  # what runs the UNet and the VAE (backends.py)
# Per-task defaults: the script each subcommand mirrors, where it differs from the RunConfig defaults (those
# of CompVis scripts/txt2img.py). Merged below the YAML files, so configs, --set and flags override them.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "txt2img": {},
    # CompVis scripts/img2img.py: --n_samples 2, --n_iter 1, --scale 5.0, --strength 0.75
    "img2img": {"n_samples": 2, "n_iter": 1, "scale": 5.0, "strength": 0.75},
    # strength 1.0: the input is fully repainted under the mask (CompVis inpaint.py has no strength)
    "inpaint": {"strength": 1.0},
    # diffusers' StableDiffusionDepth2ImgPipeline default strength
    "depth2img": {"strength": 0.8},
    # instruct-pix2pix edit_cli.py: one image, --steps 100, Euler ancestral, --cfg-text 7.5, --cfg-image 1.5,
    # a random seed when none is given
    "instruct-edit": {"n_samples": 1, "n_iter": 1, "steps": 100, "scheduler": "euler-a", "scale": 7.5,
                      "image_guidance_scale": 1.5, "seed": None},
}
# Tasks whose output size follows the input image: a preset's H/W (configs/*.yaml) does not apply to them.
SIZE_FROM_INPUT = ("img2img", "inpaint", "depth2img", "instruct-edit")
# A command-line flag that changes other defaults: instruct-edit's --output (edit_cli.py) makes one image;
# inpaint's --indir (CompVis inpaint.py) one image per image/mask pair, written as OUTDIR/x.png, no grid.
# --model demo (from a flag or a config file) brings the preset configs/demo.yaml (64 px, no safety checker)
# under everything the user set.
DEMO_PRESET = "demo"
IMPLIED = {"output": {"n_samples": 1, "n_iter": 1}, "indir": {"n_samples": 1, "n_iter": 1, "skip_grid": True}}


def defaults(task: str) -> RunConfig:
    """The config of ``task`` before any file or flag: the schema defaults and the task's own."""
    return RunConfig(task=task, **TASK_DEFAULTS[task])


def check_keys(data: dict, where: str, allowed=FIELDS) -> None:
    for key in data:
        if key not in allowed:
            raise UsageError(f"{where}: unknown key '{key}'{suggest(str(key), allowed)}")


def _merge(base, data: dict, where: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(data, where)
    try:
        return OmegaConf.merge(base, data)
    except (OmegaConfBaseException, OverflowError, ValueError) as e:  # OverflowError: steps: 1e400
        key = getattr(e, "full_key", None) or next((k for k, v in data.items() if isinstance(v, float)), "")
        value = data.get(key, "") if isinstance(key, str) else ""
        ftype = FIELDS[key].type if key in FIELDS else "the right type"
        raise UsageError(f"{where}: key '{key}': invalid value {value!r} (expected {ftype})") from None


def load(
    task: str,
    config_files: list[str] | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> RunConfig:
    """Merge defaults, YAML files, ``--set`` dot-lists and explicit flags into a validated RunConfig.

    An original LDM inference YAML or a diffusers folder among ``config_files`` is not merged: it becomes
    ``model_config`` (the architecture of a single-file checkpoint).
    """
    if task not in TASK_NAMES:
        raise UsageError(f"--task {task}: unknown task{suggest(task, TASK_NAMES)}; one of {', '.join(TASK_NAMES)}")
    explicit = {k: v for k, v in (flags or {}).items() if v is not None and v != []}
    for flag, implied in IMPLIED.items():
        if flag in explicit:
            explicit = {**implied, **explicit}
    if explicit.get("model") == "demo" and DEMO_PRESET not in (config_files or []):
        config_files = [DEMO_PRESET, *(config_files or [])]  # the demo's own settings, under the user's
    if not config_files and not sets and all(_typed(k, v) for k, v in explicit.items()):
        # Flags alone, already typed by the CLI: no YAML to merge, so skip OmegaConf (start-up time).
        check_keys(explicit, "command line")
        return validate(dataclasses.replace(defaults(task), **explicit))
    from omegaconf import OmegaConf

    conf = OmegaConf.structured(defaults(task))
    ldm_config = None
    for name in config_files or []:
        if (Path(name).expanduser() / "model_index.json").is_file():  # a diffusers folder for a single file
            ldm_config = name
            continue
        path = configfiles.find_config(name)
        data = configfiles.read_yaml(path)
        if data is None:
            continue
        if configfiles.is_ldm_config(data):
            ldm_config = path
            continue
        if not isinstance(data, dict):
            raise UsageError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
        if data.get("task", task) == task:
            data.pop("task", None)
        if task in SIZE_FROM_INPUT and Path(path).resolve().parent == configfiles.presets_dir().resolve():
            data = {k: v for k, v in data.items() if k not in ("H", "W")}  # the input image sets the size
        conf = _merge(conf, data, f"--config {path}")
    for item in sets or []:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected key=value, e.g. --set steps=30")
        key, _, raw = item.partition("=")
        key = key.strip()
        if key in FIELDS and FIELDS[key].type in ("str", "Optional[str]"):
            data = {key: raw}  # text settings verbatim, not YAML ("yes", "#1 cat", "0123")
        elif key in LIST_KEYS and not raw.lstrip().startswith("["):
            data = {key: [raw]}
        else:
            try:
                data = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={raw}"]))
            except Exception:
                raise UsageError(f"--set {item}: cannot parse it; expected key=value") from None
        conf = _merge(conf, data, f"--set {item}")
    if ldm_config and "model_config" not in explicit:
        explicit["model_config"] = ldm_config
    conf = _merge(conf, explicit, "command line")
    # Values are taken literally: no ${...} interpolation (a prompt is data; an environment variable must not
    # end up in image metadata because a config mentions it).
    values = OmegaConf.to_container(conf, resolve=False)
    for key, value in values.items():
        if isinstance(value, str) and FIELDS[key].type not in ("str", "Optional[str]"):
            raise UsageError(f"config: key '{key}': {value!r} is not a {FIELDS[key].type} (sdcli takes config values "
                             "literally; ${...} interpolation is not supported)")
    cfg = RunConfig(**values)
    if cfg.task != task:
        raise UsageError(f"config: task '{cfg.task}' does not match the subcommand '{task}'; remove the task key")
    if cfg.model == "demo" and DEMO_PRESET not in (config_files or []):
        return load(task, [DEMO_PRESET, *(config_files or [])], sets, flags)
    return validate(cfg)


_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


def _typed(key: str, value: Any) -> bool:
    """Is ``value`` already of the schema type of ``key`` (so OmegaConf has nothing to convert)?"""
    if key not in FIELDS or key == "task":
        return False
    name = str(FIELDS[key].type).removeprefix("Optional[").removesuffix("]")
    expected = _TYPES.get(name)
    if expected is None or (isinstance(value, bool) and name != "bool"):
        return False
    return isinstance(value, expected)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _utf8(text: Optional[str]) -> bool:
    """Text from argv that was not UTF-8 reaches Python as lone surrogates: the tokenizer cannot take it."""
    try:
        if text is not None:
            text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value that can be checked without files or models; normalise aliases. Pure."""
    for name in ("scale", "eta", "strength", "image_guidance_scale"):
        if isinstance(getattr(cfg, name), int):
            setattr(cfg, name, float(getattr(cfg, name)))
    cfg.scheduler = schedulers.canonical(cfg.scheduler, f"--scheduler {cfg.scheduler}")
    precision = PRECISIONS.get(cfg.precision.lower())
    _require(precision is not None, f"--precision {cfg.precision}: unknown; choose auto, fp32, fp16 or bf16")
    cfg.precision = precision
    cfg.device = cfg.device.lower()
    _require(bool(DEVICE_RE.match(cfg.device)), f"--device {cfg.device}: unknown; choose auto, cpu, cuda, cuda:N or mps")
    for key in limits.LIMITS:
        limits.check(key, getattr(cfg, key))
    _require(not (cfg.seed is None and cfg.resume),
             "--resume: this run would pick a random seed; give --seed (the first run's seed is in its manifest)")
    for key in ("prompt", "negative_prompt", "watermark_text"):
        _require(_utf8(getattr(cfg, key)), f"--{key.replace('_', '-')}: holds bytes that are not UTF-8 text; "
                                             "pass the text in UTF-8")
    _require(not (cfg.prompt is not None and cfg.from_file is not None),
             "--prompt and --from-file: give one of them, not both")
    if cfg.watermark:
        payload = cfg.watermark_text.encode("utf-8")
        _require(1 <= len(payload) <= 64, f"--watermark-text {cfg.watermark_text!r}: must be 1 to 64 bytes")
    _require(cfg.resize_mode in RESIZE_MODES, f"--resize-mode {cfg.resize_mode}: choose crop or resize")
    image_format = IMAGE_FORMATS.get(str(cfg.format).lower().lstrip("."))
    _require(image_format is not None, f"--format {cfg.format}: unknown image format; choose png, jpg or webp")
    cfg.format = image_format
    from .prompt_syntax import SYNTAXES

    _require(cfg.prompt_syntax in SYNTAXES, f"--prompt-syntax {cfg.prompt_syntax}: choose a1111, compel or none")
    _require(cfg.offload in OFFLOADS, f"--offload {cfg.offload}: choose none, model or sequential")
    cfg.backend = str(cfg.backend).lower()
    _require(cfg.backend in BACKENDS, f"--backend {cfg.backend}: unknown; choose torch, openvino or auto")
    if cfg.shard is not None:
        from . import shards

        cfg.shard = str(cfg.shard).strip()
        _require(bool(shards.SHARD_RE.match(cfg.shard) or shards.AUTO_RE.match(cfg.shard)),
                 f"--shard {cfg.shard}: write K/N (this process makes share K of N, e.g. 1/4), auto, or auto/N")
    _require(cfg.outdir != "", "--outdir: must not be empty")
    _require(cfg.model != "", "--model: must not be empty")
    return cfg
