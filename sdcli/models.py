"""Model sources, device, dtype and scheduler -> a loaded diffusers pipeline.

``resolve_source`` runs before anything heavy is imported, so a missing folder, a refused pickle or an
uncached hub id while offline is reported at once. Device and dtype logic lives here only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import RunConfig
from .errors import ModelUnavailable, UsageError, first_line, suggest
from .files import folder_problem
from .libraries import quiet_libraries
from .precision import choose, unet_bytes

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class Source:
    kind: str  # "folder", "single_file" or "hub"
    location: str  # folder path, file path or hub id
    name: str  # what metadata calls the model
    config: Optional[str] = None  # single file: local diffusers folder or original LDM YAML
    builtin: Optional[str] = None  # --model tiny: the task whose tiny model the folder holds (built on first load)
    variant: Optional[str] = None  # weights variant to load ("fp16" for *.fp16.safetensors)

    def materialize(self) -> None:
        """Build a built-in model's folder if it is not cached yet (plans name it; runs build it)."""
        if self.builtin is not None:
            from . import tiny

            tiny.ensure(self.builtin)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_source(model: str, cfg: RunConfig, task: str) -> Source:
    """Decide what ``--model`` names, checking what can be checked without loading anything."""
    if model == "tiny":
        from . import tiny

        where = tiny.folder(task)
        problem = None if (where / "model_index.json").is_file() else folder_problem(where)
        if problem:
            raise UsageError(f"--model tiny: cannot build it in the cache {where.parent} ({problem}); set "
                             "SDCLI_CACHE to a folder you can write to")
        return Source("folder", str(where), "tiny", builtin=task)
    if model == "demo":
        from . import demo

        where = demo.folder(task)
        if not (where / "model_index.json").is_file():
            raise ModelUnavailable(f"--model demo: the demo weights are missing from {where.parent}; reinstall "
                                   "sdcli, or rebuild them with `make demo-model`")
        return Source("folder", str(where), "demo")
    path = Path(model).expanduser()
    looks_like_path = path.is_absolute() or model.startswith((".", "~"))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelUnavailable(
                f"--model {model}: folder has no model_index.json; give a diffusers model folder "
                "(saved with save_pretrained) or a single .safetensors file")
        return Source("folder", str(path.resolve()), path.resolve().name, variant=pick_variant(path, cfg.variant, model))
    if model.lower().endswith(SINGLE_FILE_SUFFIXES) or path.is_file():
        if not path.is_file():
            raise ModelUnavailable(f"--model {model}: no such file")
        if model.lower().endswith(PICKLE_SUFFIXES) and not cfg.allow_unsafe_pickle:
            raise UsageError(
                f"--model {model}: a pickle checkpoint can run arbitrary code when loaded; convert it to "
                ".safetensors, or pass --allow-unsafe-pickle if you trust its source")
        if not model.lower().endswith(SINGLE_FILE_SUFFIXES):
            raise UsageError(f"--model {model}: not a model file; give a .safetensors file or a diffusers folder")
        if cfg.model_config is None:
            raise UsageError(
                f"--model {model}: a single-file checkpoint needs --model-config (a local diffusers folder of the "
                "same architecture) or --config with the original LDM inference YAML")
        cpath = Path(cfg.model_config).expanduser()
        if cpath.is_dir() and (cpath / "model_index.json").is_file() \
                or cpath.is_file() and cpath.suffix.lower() in (".yaml", ".yml"):
            config = str(cpath.resolve())
        elif not cpath.exists() and REPO_ID_RE.match(cfg.model_config) and cfg.model_config.count("/") == 1:
            config = cfg.model_config  # a hub id: its configs come from the cache (offline) or the hub
            _hub_snapshot(config, "--model-config")
        else:
            raise UsageError(
                f"--model-config {cfg.model_config}: expected a diffusers folder with model_index.json, "
                "an original LDM inference .yaml file, or a hub id (owner/name)")
        return Source("single_file", str(path.resolve()), path.stem, config)
    if looks_like_path or not REPO_ID_RE.match(model) or model.count("/") > 1:
        raise ModelUnavailable(f"--model {model}: no such folder or file, and not a hub id (owner/name)")
    snapshot = _hub_snapshot(model, "--model")
    return Source("hub", model, model, variant=pick_variant(snapshot, cfg.variant, model) if snapshot else cfg.variant)


def _hub_snapshot(repo: str, flag: str) -> Optional[Path]:
    """The cached snapshot folder of a hub id, or None. Offline, a model that is not cached is an error."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo, "model_index.json")
    if isinstance(index, str):
        return Path(index).parent
    if offline():
        raise ModelUnavailable(
            f"{flag} {repo}: not in the Hugging Face cache{suggest(repo, cached_ids())} and HF_HUB_OFFLINE is "
            "set; download it once online (or unset HF_HUB_OFFLINE), or give a local folder")
    return None


WEIGHTS_RE = re.compile(r"^diffusion_pytorch_model(?:\.(?P<variant>[\w-]+))?\.(?:safetensors|bin)$")


def pick_variant(folder: Path, asked: Optional[str], model: str) -> Optional[str]:
    """The weights variant to load (``fp16`` for ``*.fp16.safetensors``): the one asked for, which must exist,
    or, when the UNet has only one variant and no plain weights, that one."""
    try:
        names = os.listdir(Path(folder) / "unet")
    except OSError:
        return asked  # diffusers says what is missing
    found = {m.group("variant") for n in names if (m := WEIGHTS_RE.match(n))}
    if asked is not None:
        if asked not in found:
            have = ", ".join(sorted(v or "(plain)" for v in found)) or "none"
            raise UsageError(f"--variant {asked}: {model} has no {asked} weights (its UNet has: {have}); "
                             "leave --variant out or pick one of those")
        return asked
    return next(iter(found)) if len(found) == 1 else None


@dataclass(frozen=True)
class Runtime:
    """Where a run computes: the device and the precision (fp32, fp16 or bf16), checked before loading."""

    device: str
    precision: str
    auto: str = ""  # why --precision auto picked the precision ("" when the user set it)

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    @property
    def dtype_name(self) -> str:
        return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.precision]


def resolve_runtime(cfg: RunConfig, local_rank: Optional[int] = None, source: Optional[Source] = None) -> Runtime:
    """Device, precision and speed options that cannot work on this machine: a clear error before loading
    (``--dry-run`` included). Imports torch only to ask for a GPU. ``local_rank``: a launcher's process number
    on this machine, which picks its GPU for --device auto or cuda; ``source``: the model, whose UNet size
    --precision auto weighs on a CPU (precision.py)."""
    device = resolve_device(cfg.device)
    if device == "cuda" and local_rank is not None:
        import torch

        device = f"cuda:{local_rank % torch.cuda.device_count()}"  # one GPU per task (CUDA_VISIBLE_DEVICES): cuda:0
    precision = resolve_precision(cfg.precision, device)
    weights = unet_bytes(source) if precision == "auto" and device == "cpu" and source is not None else None
    choice = choose(precision, device, weights=weights)
    runtime = Runtime(device, choice.precision, choice.auto)
    check_options(cfg, device)
    return runtime


def cached_ids() -> list[str]:
    """The model ids in the Hugging Face cache (for "did you mean")."""
    from huggingface_hub import constants

    try:
        names = os.listdir(constants.HF_HUB_CACHE)
    except OSError:
        return []
    return [n[len("models--"):].replace("--", "/", 1) for n in names if n.startswith("models--")]


def resolve_device(name: str) -> str:
    if name == "cpu":
        return name
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu or --device auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError("--device mps: Apple MPS is not available here; use --device cpu or --device auto")
    return name


def resolve_precision(precision: str, device: str) -> str:
    """The asked precision, checked: fp16 on CPU is refused (most CPU kernels lack it). ``auto`` stays auto:
    precision.choose decides it."""
    if precision == "fp16" and device == "cpu":
        raise UsageError("--precision fp16: half precision is not supported on the CPU; use fp32 (or bf16)")
    return precision


def _accepted(cls, kwargs: dict) -> dict:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k == "dtype" or k in params}


def load_pipeline(pipeline_class: str, source: Source, device: str, dtype, cfg: RunConfig,
                  given: Optional[dict] = None):
    """Load the pipeline (without its built-in safety checker: postprocess runs the checker for all tasks).
    ``given``: components whose weights are not read, name -> (a weightless module of the model's class and
    config, which the pipeline is built with; what then takes its place, before anything runs)."""
    quiet_libraries()
    import diffusers

    cls = getattr(diffusers, pipeline_class)
    kwargs = _accepted(cls, dict(dtype=dtype, safety_checker=None, requires_safety_checker=False))
    if cfg.vae is not None:  # --vae / --vae-ckpt (edit_cli.py): the user's VAE instead of the model's
        from .concepts import load_vae

        kwargs["vae"] = load_vae(cfg, source, dtype)
    kwargs.update({name: placeholder for name, (placeholder, _) in (given or {}).items()})
    try:
        if source.kind == "single_file":
            if not hasattr(cls, "from_single_file"):
                raise UsageError(f"--model {source.location}: {pipeline_class} cannot load a single-file "
                                 "checkpoint; give a diffusers folder")
            if source.config.lower().endswith((".yaml", ".yml")):
                kwargs["original_config"] = source.config
            else:
                kwargs["config"] = source.config
            pipe = cls.from_single_file(source.location, local_files_only=offline() or Path(source.config).exists(),
                                        **kwargs)
        else:
            if not cfg.allow_unsafe_pickle:
                kwargs["use_safetensors"] = True
            if source.variant:
                kwargs["variant"] = source.variant
            pipe = cls.from_pretrained(source.location, local_files_only=source.kind == "folder" or offline(),
                                       **kwargs)
    except (UsageError, ModelUnavailable):
        raise
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError with long texts
        hint = ""
        if source.kind == "single_file" and "original_config" in kwargs:
            hint = (" (an LDM YAML takes the text encoder and tokenizer configs from the hub or its cache; "
                    "offline, give --model-config with a local diffusers folder instead)")
        raise ModelUnavailable(f"--model {source.location}: cannot load it as {pipeline_class}: "
                               f"{first_line(e)}{hint}") from e
    for name, (_, component) in (given or {}).items():
        setattr(pipe, name, component)
    pipe.set_progress_bar_config(disable=True)
    if cfg.offload == "none":
        pipe = pipe.to(device)
    return pipe


def check_options(cfg: RunConfig, device: str) -> None:
    """Speed/memory options that cannot work on this device: a clear error before loading."""
    if cfg.offload != "none" and not device.startswith("cuda"):
        raise UsageError(f"--offload {cfg.offload}: needs a CUDA device (it moves idle parts from the GPU to the "
                         f"CPU); on {device} leave it out")


def apply_options(pipe, cfg: RunConfig, device: str) -> None:
    """Attention/VAE slicing, VAE tiling, offload and channels-last, through the current diffusers APIs."""
    import torch

    if cfg.attention_slicing:
        pipe.enable_attention_slicing()
    if cfg.vae_slicing:
        pipe.vae.enable_slicing()
    if cfg.vae_tiling:
        pipe.vae.enable_tiling()
    if cfg.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if cfg.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif cfg.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)


def compile_unet(pipe, device: str) -> None:
    """torch.compile the UNet. On the CPU, inductor's freezing (constant-folding the weights) is what
    makes it pay off (BENCHMARKS.md, options: the compile time and the speed after it)."""
    import torch

    if device == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    pipe.unet = torch.compile(pipe.unet)


def default_size(pipe) -> tuple[int, int]:
    """The model's native size (W, H): UNet sample size x VAE scale factor."""
    size = pipe.unet.config.sample_size
    factor = getattr(pipe, "vae_scale_factor", 8)
    h, w = (size, size) if isinstance(size, int) else size
    return w * factor, h * factor
