"""The OpenVINO peer (runs inside the optimum venv, benchmarks/peers/setup.py optimum): one txt2img run of a local
diffusers SD 1.x folder through optimum-intel's OVStableDiffusionPipeline, at the settings of the bench's sdcli
command, printing one JSON line.

    ~/.cache/sdcli/bench/peers/optimum/venv/bin/python benchmarks/peers/ov_run.py --model FOLDER --out DIR \
        [--precision f32|bf16] [--weights fp32|int8] [--height 256] [--width 256] [--steps 4] [--batch 1] \
        [--seed 42] [--prompt TEXT]

- Export (once, cached under ~/.cache/sdcli/bench/peers/optimum/ir/<folder>-<model key>/{fp32,int8}): the folder
  to OpenVINO IR with fp32 weights, offline. The export reads a view of the folder (links to its UNet, VAE,
  scheduler and tokenizer; no safety checker) whose text encoder file has the `text_model.` key prefix: the
  folder's file, saved by transformers 5.x, has none, and the transformers optimum-intel accepts loads it with
  part of the encoder RANDOMLY INITIALISED, silently. The exported text encoder's output on the prompt is then
  checked against a CLIPTextModel given the folder's tensors with strict=True; a mismatch fails loudly.
  int8: NNCF weight compression (OVWeightQuantizationConfig(bits=8)) of the fp32 IR.
- Load: from_pretrained(IR, compile=False), the DDIM scheduler from the folder's config with clip_sample off
  (as benchmarks/reference.py), reshape(batch 1, H, W, num_images_per_prompt=--batch) so the shapes are static,
  then compile with ov_config INFERENCE_PRECISION_HINT=--precision (OpenVINO runs bf16 on a CPU with AVX-512
  BF16 unless f32 is asked for).
- Generate: CFG 7.5, negative prompt "", eta 0, one torch CPU generator per image seeded seed+k, as diffusers and
  sdcli, so the initial latents are the same and the pixels comparable.
JSON: export_s (only when it exported), import_s, load_s, compile_s, gen_s (steps, decode and writing the PNGs),
per_image_s, images.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import common  # noqa: E402

TE_TOLERANCE = 1e-3  # max abs difference of the text encoder's last hidden state, fp32 IR vs PyTorch


def log(msg: str) -> None:
    print(f"[ov_run] {msg}", file=sys.stderr, flush=True)


def make_view(folder: Path, view: Path) -> None:
    """A folder optimum's export reads: links to FOLDER's parts, no safety checker or feature extractor, and the
    text encoder's tensors under the `text_model.` prefix every transformers version reads."""
    from safetensors.torch import load_file, save_file

    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    for part in ("unet", "vae", "scheduler", "tokenizer"):
        (view / part).symlink_to(folder / part, target_is_directory=True)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    index.pop("image_encoder", None)
    (view / "model_index.json").write_text(json.dumps(index, indent=2))
    te = view / "text_encoder"
    te.mkdir()
    shutil.copy(folder / "text_encoder" / "config.json", te / "config.json")
    sd = load_file(str(folder / "text_encoder" / "model.safetensors"))
    save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()},
              str(te / "model.safetensors"), metadata={"format": "pt"})


def reference_text_states(folder: Path, ids):
    """The folder's text encoder in PyTorch, its tensors loaded with strict=True: last hidden state of IDS."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder"))).eval()
    sd = {(k if k.startswith("text_model.") else "text_model." + k): v
          for k, v in load_file(str(folder / "text_encoder" / "model.safetensors")).items()}
    own = model.state_dict()
    if "text_model.embeddings.position_ids" in own and "text_model.embeddings.position_ids" not in sd:
        sd["text_model.embeddings.position_ids"] = own["text_model.embeddings.position_ids"]
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        return model(torch.as_tensor(ids))[0]


def check_text_encoder(folder: Path, ir: Path, prompt: str) -> float:
    """Max abs difference of the IR's text encoder (compiled at f32) and the PyTorch one on PROMPT; raises if large."""
    import numpy as np
    import openvino as ov
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    ids = tok([prompt, ""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="np").input_ids.astype(np.int64)
    compiled = ov.Core().compile_model(str(ir / "text_encoder" / "openvino_model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({compiled.inputs[0]: ids})[compiled.outputs[0]]
    want = reference_text_states(folder, ids).numpy()
    diff = float(np.abs(got - want).max())
    if not np.isfinite(diff) or diff > TE_TOLERANCE:
        raise SystemExit(f"ov_run: the exported text encoder does NOT match the folder's (max abs diff {diff:.4g} > "
                         f"{TE_TOLERANCE}): the export read a randomly initialised encoder; not using it")
    return diff


def ensure_ir(folder: Path, weights: str, prompt: str) -> tuple[Path, dict, float | None]:
    """The IR folder for WEIGHTS (exported and checked if missing), its meta, and the export seconds (None: cached)."""
    base = common.peer_dir("optimum") / "ir" / f"{folder.name}-{common.model_key(folder)}"
    ir = base / weights
    meta_path = ir / "sdcli_export.json"
    if meta_path.is_file():
        return ir, json.loads(meta_path.read_text()), None
    from optimum.intel import OVStableDiffusionPipeline

    t0 = time.perf_counter()
    tmp = base / f".{weights}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for stale in base.parent.glob(f"{folder.name}-*"):  # IRs of earlier weights of this folder: 4 GB each
        if stale != base and re.fullmatch(re.escape(folder.name) + r"-[0-9a-f]{16}", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    if weights == "fp32":
        view = base / ".view"
        log(f"exporting {folder} to OpenVINO IR (fp32 weights) in {ir} ...")
        make_view(folder, view)
        pipe = OVStableDiffusionPipeline.from_pretrained(str(view), export=True, compile=False, load_in_8bit=False,
                                                         local_files_only=True)
        pipe.save_pretrained(str(tmp))
        del pipe
        shutil.rmtree(view, ignore_errors=True)
        meta = {"weights": "fp32", "source": str(folder)}
    else:
        from optimum.intel import OVWeightQuantizationConfig

        src, _, _ = ensure_ir(folder, "fp32", prompt)
        log(f"compressing the weights of {src} to int8 (NNCF) in {ir} ...")
        pipe = OVStableDiffusionPipeline.from_pretrained(str(src), compile=False,
                                                         quantization_config=OVWeightQuantizationConfig(bits=8))
        pipe.save_pretrained(str(tmp))
        del pipe
        meta = {"weights": "int8", "source": str(src)}
    meta["const_types"] = const_types(tmp / "unet" / "openvino_model.xml")
    meta["text_encoder_max_abs_diff"] = check_text_encoder(folder, tmp, prompt) if weights == "fp32" else None
    meta["export_s"] = round(time.perf_counter() - t0, 2)
    (tmp / "sdcli_export.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(ir, ignore_errors=True)
    os.replace(tmp, ir)
    log(f"exported in {meta['export_s']:.0f}s: UNet constants {meta['const_types']}"
        + (f", text encoder matches PyTorch (max abs diff {meta['text_encoder_max_abs_diff']:.2g})"
           if meta["text_encoder_max_abs_diff"] is not None else ""))
    return ir, meta, meta["export_s"]


def const_types(xml: Path) -> dict:
    """How many weight constants of each element type the IR holds (f32 / f16 / u8 / i8 ...)."""
    from collections import Counter

    text = xml.read_text()
    return dict(Counter(re.findall(r'<layer id="\d+" name="[^"]*" type="Const" version="opset1">\s*'
                                   r'<data element_type="(\w+)"', text)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="diffusers SD 1.x folder")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32", help="INFERENCE_PRECISION_HINT [f32]")
    ap.add_argument("--weights", choices=("fp32", "int8"), default="fp32", help="IR weights [fp32]")
    common.generation_args(ap, "images of the prompt (num_images_per_prompt) [1]")
    ap.add_argument("--export-only", action="store_true", help="export (and check) the IR, then stop")
    a = ap.parse_args(argv)
    import openvino as ov
    import torch
    from diffusers import DDIMScheduler
    from optimum.intel import OVStableDiffusionPipeline

    import_s = time.perf_counter() - T0
    folder = Path(a.model).expanduser().resolve()
    ir, meta, export_s = ensure_ir(folder, a.weights, a.prompt)
    if a.export_only:
        common.emit({"peer": "openvino", "ir": str(ir), "export_s": export_s, **meta})
        return 0
    t = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(str(ir), compile=False, local_files_only=True,
                                                     ov_config={"INFERENCE_PRECISION_HINT": a.precision})
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.reshape(batch_size=1, height=a.height, width=a.width, num_images_per_prompt=a.batch)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    pipe.compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    generators = [torch.Generator("cpu").manual_seed(a.seed + k) for k in range(a.batch)]
    images = pipe(prompt=[a.prompt], negative_prompt=[""], num_inference_steps=a.steps, height=a.height,
                  width=a.width, guidance_scale=7.5, eta=0.0, num_images_per_prompt=a.batch,
                  generator=generators).images
    paths = common.save_images(images, a.out)
    gen_s = time.perf_counter() - t
    unet = pipe.unet.request
    hint = unet.get_property("INFERENCE_PRECISION_HINT") if unet is not None else None
    hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    common.emit({"peer": "openvino", "precision": a.precision, "weights": a.weights, "export_s": export_s,
                 "import_s": round(import_s, 3), "load_s": round(load_s, 3), "compile_s": round(compile_s, 3),
                 "gen_s": round(gen_s, 3), "per_image_s": round(gen_s / len(paths), 3), "images": paths,
                 "unet_inference_precision": hint, "threads": unet.get_property("INFERENCE_NUM_THREADS") if unet else None,
                 "ir_const_types": meta.get("const_types"), "text_encoder_max_abs_diff": meta.get("text_encoder_max_abs_diff"),
                 "openvino": ov.__version__, "steps": a.steps, "height": a.height, "width": a.width, "batch": a.batch})
    return 0


if __name__ == "__main__":
    sys.exit(main())
