"""What each method trains, how it saves its result and checkpoints, and how it restores them.

Textual inversion (diffusers' textual_inversion.py): new tokens are added to the tokenizer, their embedding
rows start from the init token's, the whole model is frozen but the embedding matrix, and after every step
every row but the new ones is put back. DreamBooth LoRA (train_dreambooth_lora.py): peft LoRA layers on the
UNet's attention projections (and the text encoder's with --train-text-encoder), the rest frozen.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .settings import TrainConfig

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class Embedding:
    """Textual inversion: only the new token's rows of the text encoder's input embeddings learn."""

    def __init__(self, cfg: TrainConfig, pipe):
        import torch

        self.cfg, self.pipe = cfg, pipe
        tok, te = pipe.tokenizer, pipe.text_encoder
        self.token = cfg.token.lower()
        self.tokens = [self.token] + [f"{self.token}_{i}" for i in range(1, cfg.vectors)]
        if tok.add_tokens(self.tokens) != len(self.tokens):
            raise UsageError(f"--token {cfg.token}: already in the model's vocabulary; choose a new word")
        init = tok.encode(cfg.init_token, add_special_tokens=False)
        if len(init) != 1:
            raise UsageError(f"--init-token {cfg.init_token}: is {len(init)} tokens for this tokenizer; choose a "
                             "single-token word")
        self.ids = tok.convert_tokens_to_ids(self.tokens)
        te.resize_token_embeddings(len(tok))
        self.weight = te.get_input_embeddings().weight
        with torch.no_grad():
            self.weight[self.ids] = self.weight[init[0]].clone()
        self.original = self.weight.detach().clone()
        self.keep = torch.ones(len(tok), dtype=torch.bool)
        self.keep[self.ids] = False
        for module in (pipe.unet, pipe.vae, te):
            module.requires_grad_(False)
        self.weight.requires_grad_(True)
        te.train()

    def params(self) -> list:
        return [self.weight]

    def modules(self) -> list:
        return [self.pipe.text_encoder]

    def caption(self, text: str) -> str:
        """A multi-vector token stands for all its tokens in the text the encoder sees."""
        return text.replace(self.token, " ".join(self.tokens)) if len(self.tokens) > 1 else text

    def after_step(self) -> None:
        import torch

        with torch.no_grad():
            self.weight[self.keep] = self.original[self.keep]

    def vectors(self):
        return self.weight[self.ids].detach().float().cpu().clone()

    # results and checkpoints
    def trainable(self) -> dict:
        return {"vectors": self.vectors()}

    def load_trainable(self, tensors: dict) -> None:
        import torch

        with torch.no_grad():
            self.weight[self.ids] = tensors["vectors"].to(self.weight.device, self.weight.dtype)

    def optimizer_rows(self):
        """Only the new rows' optimizer moments matter (the others are put back after every step)."""
        return self.ids

    def save(self, out: Path) -> None:
        """diffusers' textual-inversion file: {token: [vectors, width]} (load_textual_inversion, --embedding)."""
        from ..outputs import write_exact
        from safetensors.torch import save as save_bytes

        write_exact(out, save_bytes({self.token: self.vectors().contiguous()}))


class Lora:
    """DreamBooth LoRA: peft layers on the UNet (and the text encoder) learn; the weights stay frozen."""

    def __init__(self, cfg: TrainConfig, pipe):
        import torch
        from peft import LoraConfig

        self.cfg, self.pipe = cfg, pipe
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        torch.manual_seed(cfg.seed)  # the LoRA layers' initial values
        config = dict(r=cfg.rank, lora_alpha=cfg.rank, init_lora_weights="gaussian")
        pipe.unet.add_adapter(LoraConfig(target_modules=UNET_TARGETS, **config))
        self.trained = [("unet", pipe.unet)]
        if cfg.train_text_encoder:
            pipe.text_encoder.add_adapter(LoraConfig(target_modules=TEXT_TARGETS, **config))
            self.trained.append(("text_encoder", pipe.text_encoder))
        for _, module in self.trained:
            module.train()

    def params(self) -> list:
        return [p for _, m in self.trained for p in m.parameters() if p.requires_grad]

    def modules(self) -> list:
        return [m for _, m in self.trained]

    def caption(self, text: str) -> str:
        return text

    def after_step(self) -> None:
        pass

    def layers(self) -> dict:
        from peft.utils import get_peft_model_state_dict

        return {name: get_peft_model_state_dict(module) for name, module in self.trained}

    def trainable(self) -> dict:
        return {f"{name}.{k}": v.detach().float().cpu().clone() for name, layers in self.layers().items()
                for k, v in layers.items()}

    def load_trainable(self, tensors: dict) -> None:
        from peft.utils import set_peft_model_state_dict

        for name, module in self.trained:
            mine = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            set_peft_model_state_dict(module, mine)

    def optimizer_rows(self):
        return None

    def save(self, out: Path) -> None:
        """A diffusers LoRA file (save_lora_weights): load_lora_weights and --lora read it."""
        import tempfile

        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        layers = {k: convert_state_dict_to_diffusers(v) for k, v in self.layers().items()}
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-lora-") as tmp:
            StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers["unet"],
                                                      text_encoder_lora_layers=layers.get("text_encoder"),
                                                      weight_name=out.name, safe_serialization=True)
            Path(tmp, out.name).replace(out)


def make(cfg: TrainConfig, pipe):
    return Embedding(cfg, pipe) if cfg.kind == "embedding" else Lora(cfg, pipe)
