"""What ``--backend openvino`` puts in place of a pipeline's torch modules: ``Part`` (a converted model,
compiled for each new set of input shapes) and the stand-ins for ``pipe.unet`` and ``pipe.vae`` that the
diffusers Stable Diffusion pipelines accept (they read ``config``, ``dtype``, ``device``; call
``unet(sample, t, encoder_hidden_states=..., return_dict=False)[0]``, ``vae.decode(z, return_dict=False)[0]``
and ``vae.encode(x).latent_dist``). Conversion and the cache: openvino_backend.py.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

KEEP_COMPILED = 1  # compiled shapes kept per part: each holds its own copy of the weights (3.3 GB for SD 1.5 f32)


class Part:
    """One converted module: an ``openvino.Model`` compiled for each new set of input shapes."""

    def __init__(self, core, model, name: str, config: dict, log: Callable[[str], None]):
        self.core, self.model, self.name, self.config, self.log = core, model, name, config, log
        self.compiled: dict[tuple, Any] = {}  # shapes -> infer request

    def __call__(self, *arrays):
        import numpy as np

        arrays = [np.ascontiguousarray(a) for a in arrays]
        shapes = tuple(a.shape for a in arrays)
        request = self.compiled.get(shapes)
        if request is None:
            request = self.compile(shapes)
        return np.array(request.infer(arrays)[0])  # a copy: the request reuses its output buffer

    def compile(self, shapes: tuple):
        t0 = time.monotonic()
        while len(self.compiled) >= KEEP_COMPILED:  # before compiling: never two copies more than needed
            self.compiled.pop(next(iter(self.compiled)))
        self.model.reshape({port: list(shape) for port, shape in zip(self.model.inputs, shapes)})
        request = self.core.compile_model(self.model, "CPU", self.config).create_infer_request()
        self.compiled[shapes] = request
        self.log(f"openvino: compiled {self.name} for {', '.join('x'.join(map(str, s)) for s in shapes)} in "
                 f"{time.monotonic() - t0:.1f}s")
        return request


class OVUNet:
    """Stands in for ``pipe.unet``: what the Stable Diffusion pipelines read and call."""

    def __init__(self, part: Part, config):
        import torch

        self.part, self.config = part, config
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.encoder_hid_proj = None  # no IP-adapter

    def __call__(self, sample, timestep, encoder_hidden_states, *args, return_dict: bool = True,
                 timestep_cond=None, added_cond_kwargs=None, cross_attention_kwargs=None, **other):
        import torch

        extra = [k for k, v in {**other, "timestep_cond": timestep_cond}.items() if v is not None]
        if args or extra or added_cond_kwargs:
            raise RuntimeError(f"--backend openvino: the converted UNet takes no {', '.join(extra) or 'extra inputs'}; "
                               "use --backend torch")
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0])
        out = torch.from_numpy(self.part(sample.float().numpy(), t.numpy(),
                                         encoder_hidden_states.float().numpy())).to(sample.dtype)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)


class OVAutoencoder:
    """Stands in for ``pipe.vae``: ``decode`` and ``encode`` (the latent distribution is built on torch, so
    sampling it draws from the same generators)."""

    def __init__(self, decoder: Part, encoder: Optional[Part], config):
        import torch

        self.decoder, self.encoder, self.config = decoder, encoder, config
        self.dtype, self.device = torch.float32, torch.device("cpu")

    def decode(self, z, return_dict: bool = True, generator=None):
        import torch
        from diffusers.models.autoencoders.vae import DecoderOutput

        out = torch.from_numpy(self.decoder(z.float().numpy())).to(z.dtype)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def encode(self, x, return_dict: bool = True):
        import torch
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        if self.encoder is None:
            raise RuntimeError("--backend openvino: this run converted no VAE encoder")
        dist = DiagonalGaussianDistribution(torch.from_numpy(self.encoder(x.float().numpy())).to(x.dtype))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)
