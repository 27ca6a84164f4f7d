"""Which backend runs the UNet and the VAE (``--backend torch|openvino|auto``), and the checks made before
the model loads. Pure: nothing heavy is imported (the openvino package is only looked for, not imported).

- ``torch``: the diffusers modules as they are (the default).
- ``openvino``: the UNet and the VAE converted to OpenVINO and run by its CPU plugin (openvino_backend.py);
  the text encoder, the safety checker, the depth estimator, schedulers, LoRA and embeddings stay on torch.
  The CPU only; torch-only speed options are refused; a run's LoRAs are fused into the UNet before it is
  converted, so all its rows must use one LoRA set.
- ``auto`` (the default): openvino when the device is the CPU, the UNet is large (``OPENVINO_MIN_UNET_BYTES``:
  SD 1.5 and up; for a small UNet such as the demo model's, converting and compiling cost more than they save),
  the openvino package is installed and nothing in the run needs torch; torch otherwise (the reason is logged).
  Measured in BENCHMARKS.md ("Peers"): SD 1.5 on this CPU ran 1.6-2.8x faster through OpenVINO (bf16) than on
  torch in fp32, whole process.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Optional

from .config import RunConfig
from .errors import UsageError

INSTALL_HINT = "pip install 'sdcli[openvino]'"
OPENVINO_MIN_UNET_BYTES = 256 * 2**20  # UNet weights on disk below which auto keeps torch
# Options that act on the torch modules themselves: OpenVINO runs its own graph, so they cannot apply.
TORCH_ONLY = {"compile": "--compile", "channels_last": "--channels-last", "attention_slicing": "--attention-slicing",
              "vae_slicing": "--vae-slicing", "vae_tiling": "--vae-tiling"}


@dataclass(frozen=True)
class Backend:
    name: str  # torch or openvino
    auto: str = ""  # why --backend auto picked it ("" when the user named it)

    def describe(self) -> str:
        notes = (["UNet and VAE through OpenVINO"] if self.name == "openvino" else []) \
            + ([f"--backend auto: {self.auto}"] if self.auto else [])
        return f"backend {self.name}" + (f" ({'; '.join(notes)})" if notes else "")


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def settle_device(cfg: RunConfig) -> RunConfig:
    """``--backend openvino`` runs on the CPU: ``--device auto`` then means the CPU, not a GPU that is there;
    another device is an error."""
    if cfg.backend != "openvino" or cfg.device == "cpu":
        return cfg
    if cfg.device != "auto":
        raise UsageError(f"--backend openvino with --device {cfg.device}: sdcli runs OpenVINO on the CPU only; "
                         f"use --device cpu, or --backend torch for {cfg.device}")
    return dataclasses.replace(cfg, device="cpu")


def torch_only(cfg: RunConfig) -> list[str]:
    """The run's options that need the torch modules."""
    flags = [flag for key, flag in TORCH_ONLY.items() if getattr(cfg, key)]
    return flags + ([f"--offload {cfg.offload}"] if cfg.offload != "none" else [])


def lora_sets(jobs: list) -> set:
    return {tuple((r.path, r.weight) for r in job.concepts.loras) if job.concepts else () for job in jobs}


def large(weights: Optional[int]) -> bool:
    """Is a UNet of ``weights`` bytes on disk (None: unknown) large enough for auto to pick OpenVINO?"""
    return weights is not None and weights >= OPENVINO_MIN_UNET_BYTES


def choose(cfg: RunConfig, device: str, jobs: list, weights: Optional[int] = None) -> Backend:
    """The backend of a run whose device is known (auto with a small UNet: need not be); ``--backend openvino``
    with something it cannot run is a UsageError naming it (before the model loads). ``weights``: the UNet's
    bytes on disk, which auto weighs."""
    if cfg.backend == "torch":
        return Backend("torch")
    if cfg.backend == "auto" and not large(weights):
        size = "of unknown size" if weights is None else f"of {weights / 2**20:.0f} MiB"
        return Backend("torch", f"a UNet {size} runs faster on torch than converted")
    blockers = []  # (why auto does not pick openvino, the error of --backend openvino)
    if device != "cpu":  # --backend auto with a GPU (openvino: settle_device made it the CPU)
        blockers.append((f"the device is {device}", f"--backend openvino with --device {device}: sdcli runs "
                         f"OpenVINO on the CPU only; use --device cpu, or --backend torch for {device}"))
    if not openvino_installed():
        blockers.append(("the openvino package is not installed", "--backend openvino: the openvino package is "
                         f"not installed; {INSTALL_HINT} (or use --backend torch)"))
    for flag in torch_only(cfg):
        blockers.append((f"{flag} needs torch", f"--backend openvino with {flag}: it works on the torch modules "
                         "only; leave it out, or use --backend torch"))
    if len(lora_sets(jobs)) > 1:
        blockers.append(("the rows use different LoRA sets", "--backend openvino with --lora: the rows use "
                         "different LoRA sets or weights, but OpenVINO runs one UNet with one set fused in; give "
                         "every row the same LoRAs, split the run, or use --backend torch"))
    if cfg.backend == "auto":
        if blockers:
            return Backend("torch", blockers[0][0])
        return Backend("openvino", "the device is the CPU and openvino is installed")
    if blockers:
        raise UsageError(blockers[0][1])
    return Backend("openvino")
