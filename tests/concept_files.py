"""Build the files users bring, in their real formats, from the tiny models: LoRAs (peft on the tiny UNet and
text encoder, saved by diffusers, or renamed to the kohya/A1111 layout) and textual-inversion embeddings
(diffusers and A1111 layouts). Used by test_concepts.py and the concepts benchmark."""

from __future__ import annotations

from pathlib import Path

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def make_lora(model: Path, out: Path, seed: int = 0, rank: int = 4, std: float = 0.05, text_encoder: bool = True,
              layout: str = "diffusers") -> Path:
    """A LoRA of random weights for the model folder ``model``, written as ``out`` (.safetensors).
    layout: "diffusers" (diffusers' save_lora_weights) or "kohya" (lora_unet_*/lora_te_* with .alpha, as
    kohya-ss and A1111 write them)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(model), subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    layers = {"unet_lora_layers": unet}
    if text_encoder:
        te = CLIPTextModel.from_pretrained(str(model), subfolder="text_encoder")
        te.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TEXT_TARGETS))
        layers["text_encoder_lora_layers"] = te
    with torch.no_grad():
        for module in layers.values():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, std)
    state = {k: convert_state_dict_to_diffusers(get_peft_model_state_dict(m)) for k, m in layers.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / (out.stem + ".tmp")
    StableDiffusionPipeline.save_lora_weights(str(folder), safe_serialization=True, **state)
    saved = folder / "pytorch_lora_weights.safetensors"
    if layout == "kohya":
        to_kohya(saved, out)
        saved.unlink()
    else:
        saved.replace(out)
    folder.rmdir()
    return out


def to_kohya(src: Path, dst: Path) -> Path:
    """Rename a diffusers LoRA to the kohya-ss layout (lora_unet_<module>, lora_te_text_model_<module>,
    lora_down/lora_up and an alpha per module)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = {}
    for key, value in load_file(str(src)).items():
        component, rest = key.split(".", 1)
        sep = ".lora_linear_layer." if ".lora_linear_layer." in rest else ".lora."
        module, _, kind = rest.rpartition(sep)
        prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        out[f"{name}.{ {'down.weight': 'lora_down.weight', 'up.weight': 'lora_up.weight'}[kind] }"] = value
        if kind == "down.weight":
            out[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
    save_file(out, str(dst), metadata={"ss_network_module": "networks.lora"})
    return Path(dst)


def make_embedding(out: Path, dim: int = 32, vectors: int = 1, seed: int = 0, layout: str = "diffusers",
                   token: str = "<thing>", scale: float = 1.0) -> Path:
    """A textual-inversion embedding of random vectors. layout: "diffusers" ({token: tensor}, .safetensors or
    .bin), "a1111" (.safetensors with emb_params) or "a1111-pt" (A1111's .pt: string_to_param)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vec = torch.randn(vectors, dim, generator=g) * scale
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if layout == "diffusers":
        data = {token: vec[0] if vectors == 1 else vec}
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(data, str(out))
        else:
            torch.save(data, str(out))
    elif layout == "a1111":
        from safetensors.torch import save_file

        save_file({"emb_params": vec}, str(out))
    elif layout == "a1111-pt":
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": out.stem, "step": 100,
                    "sd_checkpoint": None, "sd_checkpoint_name": None}, str(out))
    else:
        raise ValueError(layout)
    return out
