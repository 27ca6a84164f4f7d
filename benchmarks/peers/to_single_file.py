"""Convert a diffusers SD 1.x folder (UNet, VAE, CLIP text encoder) to one original-LDM .safetensors file, the
layout stable-diffusion.cpp (and A1111, ComfyUI, diffusers' from_single_file) read:

    model.diffusion_model.*                          the UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                              the VAE (encoder.down.N.block.M, mid.attn_1 as 1x1 convs)
    cond_stage_model.transformer.text_model.*        the CLIP text encoder

    python benchmarks/peers/to_single_file.py [MODEL_FOLDER] [--out FILE] [--verify] [--force]

Needs only numpy and safetensors (runs in the sdcpp venv or sdcli's). Cached: the file is rewritten only when
the folder's weights change (benchmarks/peers/common.model_key, kept in FILE.json). The key mapping is the
inverse of diffusers' single-file loader (diffusers/loaders/single_file_utils.py); --verify (in a venv with
diffusers, e.g. sdcli's .venv) loads the file back with StableDiffusionPipeline.from_single_file(config=FOLDER)
and checks that every UNet, VAE and text-encoder tensor equals the folder's. Prints the file on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
            "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str, table: dict) -> str:
    head, _, tail = rest.partition(".")
    return f"{table.get(head, head)}.{tail}"


def unet_key(k: str) -> str:
    """One diffusers UNet2DConditionModel key (SD 1.x layout) -> its original LDM name."""
    for src, dst in UNET_TOP.items():
        if k.startswith(src + "."):
            return dst + k[len(src):]
    m = re.match(r"(down|up)_blocks\.(\d)\.(resnets|attentions|downsamplers|upsamplers)\.(\d)\.(.+)", k)
    if m:
        side, i, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if kind == "downsamplers":  # conv.weight -> op.weight
            return f"input_blocks.{3 * i + 3}.0.op.{rest.split('.', 1)[1]}"
        if kind == "upsamplers":
            return f"output_blocks.{3 * i + 2}.{1 if i == 0 else 2}.{rest}"
        n = 3 * i + j + 1 if side == "down" else 3 * i + j
        block = "input_blocks" if side == "down" else "output_blocks"
        return f"{block}.{n}.0.{_resnet(rest, RESNET)}" if kind == "resnets" else f"{block}.{n}.1.{rest}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", k)
    if m:
        j, rest = int(m.group(2)), m.group(3)
        return f"middle_block.{2 * j}.{_resnet(rest, RESNET)}" if m.group(1) == "resnets" else f"middle_block.1.{rest}"
    raise KeyError(f"unexpected UNet key {k}")


def vae_key(k: str) -> str:
    """One diffusers AutoencoderKL key -> its original LDM name."""
    if re.match(r"(quant_conv|post_quant_conv)\.", k):
        return k
    part, rest = k.split(".", 1)  # encoder / decoder
    m = re.match(r"(down|up)_blocks\.(\d)\.(resnets|downsamplers|upsamplers)\.(\d)\.(.+)", rest)
    if m:
        i = int(m.group(2)) if m.group(1) == "down" else 3 - int(m.group(2))  # LDM numbers the decoder from the bottom
        stage = "down" if m.group(1) == "down" else "up"
        if m.group(3) == "resnets":
            return f"{part}.{stage}.{i}.block.{m.group(4)}.{_resnet(m.group(5), {'conv_shortcut': 'nin_shortcut'})}"
        return f"{part}.{stage}.{i}.{'downsample' if m.group(3) == 'downsamplers' else 'upsample'}.{m.group(5)}"
    m = re.match(r"mid_block\.resnets\.(\d)\.(.+)", rest)
    if m:
        return f"{part}.mid.block_{int(m.group(1)) + 1}.{_resnet(m.group(2), {})}"
    m = re.match(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)$", rest)
    if m:
        return f"{part}.mid.attn_1.{VAE_ATTN[m.group(1)]}.{m.group(2)}"
    if rest.startswith("conv_norm_out."):
        return f"{part}.norm_out.{rest.split('.', 1)[1]}"
    if re.match(r"(conv_in|conv_out)\.", rest):
        return k
    raise KeyError(f"unexpected VAE key {k}")


def text_key(k: str) -> str:
    """A CLIPTextModel key (transformers 4: text_model.X, 5: X) -> cond_stage_model.transformer.text_model.X."""
    return "cond_stage_model.transformer.text_model." + (k[len("text_model."):] if k.startswith("text_model.") else k)


def _one(folder: Path, part: str) -> Path:
    files = sorted((folder / part).glob("*.safetensors"))
    files = [f for f in files if not re.search(r"\.(fp16|bf16)\.safetensors$", f.name)] or files
    if len(files) != 1:
        raise SystemExit(f"to_single_file: expected one .safetensors in {folder / part}, found {[f.name for f in files]}")
    return files[0]


def convert(folder: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for part, prefix, rename in (("unet", "model.diffusion_model.", unet_key), ("vae", "first_stage_model.", vae_key),
                                 ("text_encoder", "", text_key)):
        for k, v in load_file(str(_one(folder, part))).items():
            if k.endswith("position_ids"):
                continue  # a buffer, made at load time
            name = prefix + rename(k)
            if part == "vae" and re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name) and v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)  # LDM's VAE attention projections are 1x1 convolutions
            if name in out:
                raise SystemExit(f"to_single_file: two keys map to {name}")
            out[name] = v
    return out


def ensure(folder: Path, out: Path | None = None, force: bool = False) -> tuple[Path, float | None]:
    """The single file for FOLDER (written if missing or stale) and the seconds writing it took (None: cached)."""
    folder = Path(folder).resolve()
    out = Path(out) if out else common.peers_dir() / f"{folder.name}.safetensors"
    key = common.model_key(folder)
    side = out.with_name(out.name + ".json")
    try:
        cached = json.loads(side.read_text()).get("key") == key and out.is_file()
    except (OSError, ValueError):
        cached = False
    if cached and not force:
        return out, None
    from safetensors.numpy import save_file

    t0 = time.perf_counter()
    sd = convert(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"format": "pt", "source": str(folder), "sdcli_model_key": key})
    os.replace(tmp, out)
    side.write_text(json.dumps({"key": key, "source": str(folder), "tensors": len(sd)}) + "\n")
    return out, time.perf_counter() - t0


def verify(folder: Path, path: Path) -> list[str]:
    """Load PATH with diffusers' from_single_file (config = FOLDER) and compare with FOLDER's weights."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                    safety_checker=None, torch_dtype=torch.float32)
    problems = []
    for part in ("unet", "vae", "text_encoder"):
        want = {k.removeprefix("text_model."): v for k, v in load_file(str(_one(folder, part))).items()
                if not k.endswith("position_ids")}
        got = {k.removeprefix("text_model."): v for k, v in getattr(pipe, part).state_dict().items()
               if not k.endswith("position_ids")}
        if want.keys() != got.keys():
            problems.append(f"{part}: keys differ (missing {sorted(want.keys() - got.keys())[:3]}, "
                            f"extra {sorted(got.keys() - want.keys())[:3]})")
        bad = [k for k in want.keys() & got.keys() if not torch.equal(want[k], got[k].reshape(want[k].shape))]
        if bad:
            problems.append(f"{part}: {len(bad)} tensors differ, e.g. {bad[:3]}")
        print(f"{part}: {len(want)} tensors, {len(want) - len(bad)} equal", file=sys.stderr)
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=str(common.cache_base() / "sd15-random"), help="diffusers folder")
    ap.add_argument("--out", help="the .safetensors to write [~/.cache/sdcli/bench/peers/<folder name>.safetensors]")
    ap.add_argument("--force", action="store_true", help="rewrite even if cached")
    ap.add_argument("--verify", action="store_true", help="load it back with diffusers and compare every tensor")
    a = ap.parse_args(argv)
    path, took = ensure(Path(a.model), Path(a.out) if a.out else None, a.force)
    print(f"{'wrote' if took is not None else 'cached'}: {path} ({path.stat().st_size / 2**30:.2f} GiB"
          + (f", {took:.1f}s" if took is not None else "") + ")", file=sys.stderr)
    if a.verify:
        problems = verify(Path(a.model).resolve(), path)
        if problems:
            print("round trip FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("round trip ok: every UNet, VAE and text-encoder tensor equals the folder's", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
