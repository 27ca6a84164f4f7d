"""tests/ldm_export.py writes single files that diffusers' from_single_file loads back weight for weight."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):  # ldm_export (a helper beside this file) and sdcli, under any pytest runner
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ldm_export import export_single_file  # noqa: E402


def _use_sd15_layout(folder: Path) -> None:
    """Swap in a UNet and VAE with the block structure of SD 1.5 (4 levels), only much narrower."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(  # default block types: CrossAttnDownBlock2D x3 + DownBlock2D, as SD 1.5
        block_out_channels=(32, 64, 64, 64), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, cross_attention_dim=32, attention_head_dim=8,
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        block_out_channels=(32, 64, 64, 64), layers_per_block=2, latent_channels=4, sample_size=128,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    ).save_pretrained(folder / "vae")


@pytest.mark.parametrize("kind", ["txt2img", "inpaint", "instruct-pix2pix", "sd15-layout"])
def test_export_round_trips_through_from_single_file(kind, tmp_path):
    import diffusers
    import torch
    from safetensors import safe_open

    from sdcli import tiny

    folder = tiny.build("txt2img" if kind == "sd15-layout" else kind, tmp_path / kind)
    if kind == "sd15-layout":
        _use_sd15_layout(folder)
    out = export_single_file(folder, tmp_path / f"{kind}.safetensors")

    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        # LDM's VAE attention uses 1x1 convs (diffusers' loader would accept linear weights as well).
        assert len(f.get_slice("first_stage_model.decoder.mid.attn_1.proj_out.weight").get_shape()) == 4
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model.")
    assert keys and all(k.startswith(prefixes) for k in keys)
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys

    if kind == "sd15-layout":  # a few names as in the SD 1.5 release file
        for name in ("input_blocks.9.0.op.weight", "output_blocks.2.1.conv.weight",
                     "output_blocks.5.2.conv.weight", "output_blocks.11.1.proj_out.weight",
                     "input_blocks.4.0.skip_connection.weight"):
            assert "model.diffusion_model." + name in keys
        for name in ("decoder.up.3.block.2.conv1.weight", "decoder.up.1.upsample.conv.weight",
                     "encoder.down.1.block.0.nin_shortcut.weight", "decoder.mid.block_2.norm1.bias"):
            assert "first_stage_model." + name in keys

    cls = getattr(diffusers, tiny.PIPELINE_CLASSES.get(kind, "StableDiffusionPipeline"))
    loaded = cls.from_single_file(str(out), config=str(folder), local_files_only=True,
                                  safety_checker=None, requires_safety_checker=False)
    reference = cls.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                    requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(loaded, name).state_dict(), getattr(reference, name).state_dict()
        assert got.keys() == want.keys(), name
        for key, tensor in want.items():
            assert torch.equal(got[key], tensor), f"{name}.{key}"
