"""``--backend openvino``: a loaded pipeline's UNet and VAE converted to OpenVINO and swapped in place.

Only the heavy modules change; the pipeline, schedulers, text encoder (LoRA, embeddings, prompt weighting),
safety checker, depth estimator, watermark and records stay as they are. Each part (``unet``,
``vae-decoder``, ``vae-encoder`` for the tasks that encode an image) is

- converted once with ``openvino.convert_model`` from the fp32 torch module, traced at an odd latent size so
  the graph keeps diffusers' path for any size (the UNet passes its upsample sizes along), with dynamic shapes;
- checked: one call on a fixed input through both, compiled in f32; a conversion that differs from torch is
  refused (never cached);
- saved (``save_model``, no fp16 compression) into the cache (openvino_cache.py), keyed by the sha256 of the
  weights (hashes.py), the module's config, the LoRAs fused into it and the converter's versions;
- compiled for each new set of input shapes (batch with guidance, latent size, prompt length) with the run's
  precision as ``INFERENCE_PRECISION_HINT`` (fp32 -> f32, bf16 -> bf16: without it OpenVINO picks bf16 on CPUs
  that have it) and torch's thread count.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Callable, Optional

from . import hashes, openvino_cache
from .backends import INSTALL_HINT
from .errors import SdcliError, UsageError, first_line
from .openvino_parts import OVAutoencoder, OVUNet, Part

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}  # sdcli precision -> INFERENCE_PRECISION_HINT
CHECK_LATENT = 9  # odd, so no UNet's up factor divides it: the traced graph carries explicit upsample sizes
TOLERANCE = 1e-3  # the check: max |openvino - torch| <= TOLERANCE * max(1, max |torch|), compiled in f32


def load_openvino():
    """The openvino package, with its usage telemetry off: openvino-telemetry sends events on import and on every
    conversion unless the user opted out, and an unattended, offline tool must not (it also costs ~1 s per
    conversion). Blocking the module makes OpenVINO use its built-in no-op stub."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as e:
        raise UsageError(f"--backend openvino: cannot import openvino ({first_line(e)}); {INSTALL_HINT}") from None
    return openvino


def _modules(unet=None, vae=None):
    """The torch callables that are converted: plain positional tensors in, one tensor out."""
    import torch

    class UNetCall(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class Decode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z):
            return self.vae.decode(z, return_dict=False)[0]

    class Encode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, x):
            return self.vae.encode(x).latent_dist.parameters  # the moments: mean and log-variance

    if unet is not None:
        return UNetCall(unet).eval()
    return Decode(vae).eval(), Encode(vae).eval()


def _examples(unet=None, vae=None) -> tuple:
    """Fixed inputs for tracing and the check (seeded, so the check is the same on every machine)."""
    import torch

    g = torch.Generator("cpu").manual_seed(0)
    n = CHECK_LATENT
    if unet is not None:
        c = unet.config
        width = c.cross_attention_dim if isinstance(c.cross_attention_dim, int) else c.cross_attention_dim[0]
        return (torch.randn(1, c.in_channels, n, n, generator=g), torch.tensor([500.0]),
                torch.randn(1, 77, width, generator=g))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return ((torch.randn(1, vae.config.latent_channels, n, n, generator=g),),
            (torch.rand(1, vae.config.in_channels, n * factor, n * factor, generator=g) * 2 - 1,))


def tensor_sha256(module) -> str:
    """The weights of a module in memory (when no weights file names them): name, dtype, shape and bytes."""
    import hashlib

    import torch

    sha = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        sha.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        sha.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def vae_sha256(source, variant: Optional[str], spec: Optional[str]) -> Optional[str]:
    """The sha256 of a VAE's weights: a --vae file or folder, else the model's ``vae/`` (a single-file model:
    the whole checkpoint); None when no file names them."""
    if spec is not None:
        from .concepts import vae_sha256 as spec_sha256

        return spec_sha256(spec)
    try:
        files = hashes.source_files(source, variant, "vae")
        return hashes.files_sha256(files) if files else None
    except OSError:
        return None


class Converter:
    """Converts (or takes from the cache) the parts of one run, compiled with its precision."""

    def __init__(self, precision: str, log: Callable[[str], None], warn: Callable[[str], None]):
        import diffusers
        import torch

        self.ov = load_openvino()
        self.core = self.ov.Core()
        self.log, self.warn = log, warn
        self.config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.versions = {"openvino": self.ov.get_version(), "torch": torch.__version__,
                         "diffusers": diffusers.__version__}

    def key(self, name: str, weights: str, config: dict, **extra) -> str:
        """The cache key of a part: its weights' sha256, its module's config, ``extra`` (the fused LoRAs) and the
        converter's versions."""
        config = {k: v for k, v in config.items() if not k.startswith("_")}  # not _name_or_path: where it was
        return openvino_cache.key_of({"part": name, "weights": weights, "config": config, **extra, **self.versions})

    def cached(self, name: str, key: str) -> Optional[Part]:
        """The part from the cache; None when it is not there (a damaged entry is removed, with a warning)."""
        folder = openvino_cache.root() / key
        xml, damaged = openvino_cache.lookup(key, name)
        if xml is not None:
            try:
                model = self.core.read_model(str(xml))
                self.log(f"openvino: {name} cached ({folder})")
                return Part(self.core, model, name, self.config, self.log)
            except RuntimeError as e:
                damaged = f"openvino cannot read it: {first_line(e)}"
        if damaged:
            self.warn(f"openvino: the cached {name} in {folder} is damaged ({damaged}); converting it again")
            openvino_cache.discard(key)
        return None

    def part(self, name: str, module, example: tuple, weights: Optional[str], config: dict, **extra) -> Part:
        """The part from the cache, else converted, checked against ``module`` and cached."""
        key = self.key(name, weights or tensor_sha256(module), config, **extra)
        part = self.cached(name, key)
        if part is not None:
            return part
        t0 = time.monotonic()
        model = self.convert(module, example, name)
        diff = self.check(model, module, example, name)
        seconds = time.monotonic() - t0
        meta = {"seconds": round(seconds, 1), "max_diff": diff, "versions": self.versions, "weights": weights}
        def save(tmp) -> dict:
            self.ov.save_model(model, str(tmp / f"{name}.xml"), compress_to_fp16=False)
            return meta

        try:
            xml = openvino_cache.store(key, name, save)
            model = self.core.read_model(str(xml))  # the weights mapped from the file, not held twice
            where = f"cached in {xml.parent}"
        except OSError as e:
            where = "not cached"
            self.warn(f"openvino: cannot write the cache {openvino_cache.root()} ({e.strerror or e}); the {name} is "
                      "converted again on every run; set SDCLI_CACHE to a folder you can write to")
        self.log(f"openvino: {name} converted in {seconds:.1f}s (max difference to torch {diff:.1e}), {where}")
        return Part(self.core, model, name, self.config, self.log)

    def convert(self, module, example: tuple, name: str):
        import torch

        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings: shape checks that the trace keeps as they were
                traced = torch.jit.trace(module, example, check_trace=False, strict=False)
                return self.ov.convert_model(traced, example_input=example)
        except Exception as e:  # the converter's errors have no common type
            raise SdcliError(f"--backend openvino: cannot convert the {name}: {first_line(e)}; use --backend "
                             "torch") from e

    def check(self, model, module, example: tuple, name: str) -> float:
        """One call on the fixed input through both, OpenVINO in f32: the largest difference. A conversion that
        differs is refused."""
        import numpy as np
        import torch

        dynamic = {port: port.get_partial_shape() for port in model.inputs}
        model.reshape({port: list(t.shape) for port, t in zip(model.inputs, example)})
        compiled = self.core.compile_model(model, "CPU", {**self.config, "INFERENCE_PRECISION_HINT": "f32"})
        got = np.asarray(compiled([t.numpy() for t in example])[0])
        del compiled
        model.reshape(dynamic)  # saved with the shapes open; each run compiles its own
        with torch.no_grad():
            want = module(*example).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        limit = TOLERANCE * max(1.0, float(np.abs(want).max()))
        if not diff <= limit:  # also NaN
            raise SdcliError(f"--backend openvino: the converted {name} differs from torch (max difference {diff:.2e}, "
                             f"allowed {limit:.1e}), so it is neither used nor cached; use --backend torch "
                             f"(openvino {self.versions['openvino']}, torch {self.versions['torch']})")
        return diff


def swap(pipe, vaes: dict, *, precision: str, source, variant: Optional[str], unet_sha256: Optional[str],
         loras: list, encoder: bool, log: Callable[[str], None], warn: Callable[[str], None]) -> dict:
    """Replace ``pipe.unet`` by its OpenVINO part, and return ``vaes`` (spec -> AutoencoderKL) as OpenVINO
    autoencoders (``encoder``: with an encoder, for the tasks that encode an input image). ``loras``: the
    (sha256, weight) of the LoRAs fused into the UNet, part of its cache key."""
    unet = pipe.unet
    extra = [k for k in ("time_cond_proj_dim", "addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
             if not isinstance(unet, OVUNet) and unet.config.get(k) is not None]
    if extra:
        raise UsageError(f"--backend openvino: this UNet takes extra conditioning ({', '.join(extra)}) that the "
                         "conversion does not carry; use --backend torch")
    conv = Converter(precision, log, warn)
    if not isinstance(unet, OVUNet):  # (preload: already taken from the cache)
        pipe.unet = OVUNet(conv.part("unet", _modules(unet=unet), _examples(unet=unet), unet_sha256,
                                     dict(unet.config), loras=loras), unet.config)
    swapped = {spec: vae for spec, vae in vaes.items() if isinstance(vae, OVAutoencoder)}
    for spec, vae in vaes.items():
        if spec in swapped:
            continue
        weights = vae_sha256(source, variant, spec)
        decode, encode = _modules(vae=vae)
        z, x = _examples(vae=vae)
        swapped[spec] = OVAutoencoder(
            conv.part("vae-decoder", decode, z, weights, dict(vae.config)),
            conv.part("vae-encoder", encode, x, weights, dict(vae.config)) if encoder else None, vae.config)
    return swapped


def preload(source, variant: Optional[str], precision: str, unet_sha256: Optional[str], encoder: bool,
            log: Callable[[str], None], warn: Callable[[str], None]) -> Optional[dict]:
    """A run whose model's UNet and VAE are all in the cache need not read their torch weights (3.4 GB for SD
    1.5, loaded and then dropped): {name: (a weightless module of the model's class and config, for
    ``from_pretrained``; its OpenVINO stand-in)}. None when a part is not cached, or the model is not a
    diffusers folder (or cached hub snapshot) whose weights files are hashed: the run loads and converts as
    usual. The keys are those ``swap`` computes from the loaded modules (same configs, same hashes)."""
    if source.kind == "single_file" or unet_sha256 is None:
        return None
    vae_weights = vae_sha256(source, variant, None)
    if vae_weights is None:
        return None
    import diffusers
    from accelerate import init_empty_weights

    try:
        index = diffusers.DiffusionPipeline.load_config(source.location, local_files_only=True)
        classes = {name: index[name][1] for name in ("unet", "vae")}
        if classes != {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL"}:
            return None
        with init_empty_weights():
            modules = {name: getattr(diffusers, cls).from_config(getattr(diffusers, cls).load_config(
                source.location, subfolder=name, local_files_only=True)) for name, cls in classes.items()}
    except Exception:  # no readable config: the usual load says what is wrong
        return None
    unet, vae = modules["unet"], modules["vae"]
    conv = Converter(precision, log, warn)
    keys = {name: conv.key(name, weights, dict(config), **extra)
            for name, weights, config, extra in (("unet", unet_sha256, unet.config, {"loras": []}),
                                                 ("vae-decoder", vae_weights, vae.config, {}),
                                                 ("vae-encoder", vae_weights, vae.config, {}))[:3 if encoder else 2]}
    if any(openvino_cache.lookup(key, name)[0] is None for name, key in keys.items()):
        return None  # missing or damaged: swap converts it (and says why)
    parts = {name: conv.cached(name, key) for name, key in keys.items()}
    if any(part is None for part in parts.values()):
        return None
    log("openvino: the UNet and VAE come from the cache; their torch weights are not read")
    return {"unet": (unet, OVUNet(parts["unet"], unet.config)),
            "vae": (vae, OVAutoencoder(parts["vae-decoder"], parts.get("vae-encoder"), vae.config))}
