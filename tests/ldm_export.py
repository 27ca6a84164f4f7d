"""Export a diffusers Stable Diffusion folder as one original (CompVis/LDM, SD 1.x layout) ``.safetensors``.

A test helper: single-file checkpoints are what most people download, so tests export the tiny models
(see ``sdcli/tiny.py``) to that format and load them back the way a real ``.safetensors`` would be loaded.

The key mapping follows diffusers' old ``scripts/convert_diffusers_to_original_stable_diffusion.py``, but
the block indices are derived from ``unet/config.json`` and ``vae/config.json`` instead of assuming the
4-block SD 1.x layout, so the tiny 2-block models convert too. Every key must map: an unknown key raises.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_UNET_TOP = {  # diffusers module -> LDM module
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    """Rename the module of ``rest`` (``module.param``, module relative to its block) through ``table``."""
    module, _, param = rest.rpartition(".")
    return f"{table.get(module, module)}.{param}"


def _unet_key(key: str, config: dict) -> str:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("only an int layers_per_block is supported (SD 1.x layout)")
    step = layers + 1  # LDM input/output blocks per resolution level
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"input_blocks.{step * i + j + 1}.0.{_rename(rest, _UNET_RESNET)}"
        return f"input_blocks.{step * i + j + 1}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "resnets":
            return f"output_blocks.{step * i + j}.0.{_rename(rest, _UNET_RESNET)}"
        return f"output_blocks.{step * i + j}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        i = int(m[1])
        # The upsampler follows the last resnet, and its attention if the block has one.
        slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        return f"output_blocks.{step * i + layers}.{slot}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    module, _, param = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    raise ValueError(f"unet key {key!r} has no LDM counterpart")


def _vae_key(key: str, config: dict) -> str:
    levels = len(config["block_out_channels"])
    shortcut = {"conv_shortcut": "nin_shortcut"}
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    # The LDM decoder numbers its levels from the lowest resolution up: the reverse of diffusers.
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], shortcut)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
    module, _, param = key.rpartition(".")
    if module in _VAE_TOP:
        return f"{_VAE_TOP[module]}.{param}"
    if module in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                  "quant_conv", "post_quant_conv"):
        return key
    raise ValueError(f"vae key {key!r} has no LDM counterpart")


def _load_component(folder: Path) -> dict:
    """The state dict of one pipeline component folder (single file or sharded safetensors)."""
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return load_file(folder / name)
    for name in ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"):
        if (folder / name).is_file():
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
            state: dict = {}
            for shard in shards:
                state.update(load_file(folder / shard))
            return state
    raise FileNotFoundError(f"no safetensors weights in {folder}")


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def export_single_file(pipeline_folder: str | Path, out_path: str | Path) -> Path:
    """Write the UNet, VAE and CLIP text encoder of ``pipeline_folder`` to ``out_path`` with LDM key names.

    Keys: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE, mid-block attention as 1x1
    convs) and ``cond_stage_model.transformer.text_model.*`` (CLIP text encoder), nothing else. Load it
    with ``from_single_file(path, config=pipeline_folder, local_files_only=True)``: tokenizer, scheduler
    and configs come from the folder; the safety checker is never loaded from a single file.
    """
    from safetensors.torch import save_file

    folder, out_path = Path(pipeline_folder), Path(out_path)
    state: dict = {}

    def put(key, tensor):
        if key in state:
            raise ValueError(f"two weights map to {key!r}")
        state[key] = tensor

    unet_config = _config(folder / "unet")
    for key, tensor in _load_component(folder / "unet").items():
        put(UNET_PREFIX + _unet_key(key, unet_config), tensor)

    vae_config = _config(folder / "vae")
    for key, tensor in _load_component(folder / "vae").items():
        ldm_key = _vae_key(key, vae_config)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # linear -> 1x1 conv
        put(VAE_PREFIX + ldm_key, tensor)

    for key, tensor in _load_component(folder / "text_encoder").items():
        # transformers >= 5.6 saves CLIPTextModel without its ``text_model.`` level; LDM files have it.
        put(TEXT_PREFIX + (key if key.startswith("text_model.") else "text_model." + key), tensor)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path), metadata={"format": "pt"})
    return out_path
