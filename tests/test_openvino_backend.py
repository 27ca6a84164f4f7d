"""``--backend openvino`` (issue 14): the UNet and the VAE converted to OpenVINO, cached, and run by its CPU
plugin, through the same CLI as the torch backend. Images are compared with the torch backend's (fp32), on the
tiny models and the trained demo model; the cache is checked for reuse, damage and concurrent writers.

The module is skipped where the openvino package is not installed (it is in the ``dev`` extra). It is never
imported here: sdcli imports it itself, with its usage telemetry off (openvino_backend.load_openvino)."""

from __future__ import annotations

import re
import importlib.util
import json
import os
from pathlib import Path

import pytest

from helpers import FAST, manifest, pixels

pytestmark = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                reason="--backend openvino needs the openvino package (pip install 'sdcli[openvino]')")

ONE = ["--n_samples", 1, "--n_iter", 1, "--seed", 7, "--no-safety-checker", "--no-watermark"]
FP32 = ["--precision", "fp32"]
MAX_DIFF = 2  # grey levels between --backend openvino (fp32) and --backend torch; measured: 0 or 1


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache of converted models for this test (the rest of the session's cache is shared)."""
    from sdcli import openvino_cache

    root = tmp_path / "openvino-cache"
    monkeypatch.setattr(openvino_cache, "root", lambda: root)
    return root


def run(sdcli, out: Path, task: str, model, *args):
    r = sdcli(task, "--model", model, *FAST, *ONE, *FP32, "--outdir", out, *args)
    assert r.code == 0, r.err
    return r


def entries(root: Path) -> dict[str, float]:
    """Every file of the OpenVINO cache with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_txt2img_through_openvino_matches_torch_and_the_second_run_uses_the_cache(sdcli, tiny, tmp_path, fresh_cache):
    run(sdcli, tmp_path / "torch", "txt2img", tiny(), "--backend", "torch")
    first = run(sdcli, tmp_path / "ov1", "txt2img", tiny(), "--backend", "openvino")
    assert "backend openvino" in first.err
    assert "openvino: unet converted in" in first.err and "openvino: vae-decoder converted in" in first.err
    assert "vae-encoder" not in first.err  # txt2img encodes no image
    torch_px, ov_px = (pixels(tmp_path / name / "samples" / "00000.png") for name in ("torch", "ov1"))
    assert abs(torch_px - ov_px).max() <= MAX_DIFF
    cached = entries(fresh_cache)
    assert sorted(Path(name).name for name in cached) == sorted(
        ["meta.json", "unet.xml", "unet.bin", "meta.json", "vae-decoder.xml", "vae-decoder.bin"])
    second = run(sdcli, tmp_path / "ov2", "txt2img", tiny(), "--backend", "openvino")
    assert "openvino: unet cached" in second.err and "openvino: vae-decoder cached" in second.err
    assert "converted" not in second.err
    assert "their torch weights are not read" in second.err and "not read" not in first.err
    assert entries(fresh_cache) == cached  # nothing written again
    assert (pixels(tmp_path / "ov2" / "samples" / "00000.png") == ov_px).all()
    # recorded as device and precision are: manifest line and the PNG's JSON record
    assert manifest(tmp_path / "torch")[0]["backend"] == "torch"
    rec = manifest(tmp_path / "ov1")[0]
    assert (rec["backend"], rec["device"], rec["precision"]) == ("openvino", "cpu", "float32")
    from sdcli.outputs import read_metadata

    assert json.loads(read_metadata(str(tmp_path / "ov1" / "samples" / "00000.png"))["sdcli"])["backend"] == "openvino"


def test_the_demo_model_draws_the_same_pictures_through_openvino(sdcli, tmp_path):
    from PIL import Image

    from sdcli.demo import checker

    prompt = "a large red circle on a blue background"
    outs = {}
    for backend in ("torch", "openvino"):
        outs[backend] = tmp_path / backend
        r = sdcli("txt2img", "--model", "demo", "--prompt", prompt, "--steps", 20, "--n_samples", 2, "--n_iter", 1,
                  "--skip_grid", *FP32, "--backend", backend, "--outdir", outs[backend])
        assert r.code == 0, r.err
    for i in range(2):
        a, b = (outs[k] / "samples" / f"{i:05d}.png" for k in ("torch", "openvino"))
        assert abs(pixels(a) - pixels(b)).max() <= MAX_DIFF
        said = [checker.check(Image.open(f).convert("RGB"), prompt) for f in (a, b)]
        assert said[0] == said[1]
    assert manifest(outs["openvino"])[0]["backend"] == "openvino"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("ov-inputs")
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8")).save(folder / "in.png")
    mask = np.zeros((64, 64), "uint8")
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.tile(np.linspace(0, 255, 64), (64, 1)).astype("uint8")).save(folder / "depth.png")
    return folder


@pytest.mark.parametrize("task, args", [
    ("img2img", ["--image", "in.png"]),
    ("inpaint", ["--image", "in.png", "--mask", "mask.png"]),
    ("depth2img", ["--image", "in.png", "--depth-map", "depth.png"]),
    ("instruct-edit", ["--image", "in.png", "--prompt", "make it snowy"]),
])
def test_every_image_task_runs_through_openvino_as_through_torch(sdcli, tiny, tmp_path, inputs, task, args,
                                                                 fresh_cache):
    args = [inputs / a if a.endswith(".png") else a for a in args]
    run(sdcli, tmp_path / "torch", task, tiny(task), "--backend", "torch", *args)
    r = run(sdcli, tmp_path / "ov", task, tiny(task), "--backend", "openvino", *args)
    assert "openvino: vae-encoder converted" in r.err  # the input image is encoded through OpenVINO too
    a, b = (pixels(tmp_path / k / "samples" / "00000.png") for k in ("torch", "ov"))
    assert abs(a - b).max() <= MAX_DIFF
    assert manifest(tmp_path / "ov")[0]["backend"] == "openvino"
    # the second run takes all three parts from the cache without reading the torch UNet and VAE
    r = run(sdcli, tmp_path / "ov2", task, tiny(task), "--backend", "openvino", *args)
    assert "openvino: vae-encoder cached" in r.err and "their torch weights are not read" in r.err
    assert (pixels(tmp_path / "ov2" / "samples" / "00000.png") == b).all()


@pytest.mark.parametrize("args, words", [
    (["--backend", "openvino", "--device", "cuda"], ["--backend openvino", "--device cuda", "--backend torch"]),
    (["--backend", "openvino", "--device", "mps"], ["--backend openvino", "--device mps"]),
    (["--backend", "openvino", "--compile"], ["--backend openvino", "--compile"]),
    (["--backend", "openvino", "--channels-last"], ["--backend openvino", "--channels-last"]),
    (["--backend", "openvino", "--attention-slicing"], ["--backend openvino", "--attention-slicing"]),
    (["--backend", "openvino", "--vae-slicing"], ["--backend openvino", "--vae-slicing"]),
    (["--backend", "openvino", "--vae-tiling"], ["--backend openvino", "--vae-tiling"]),
    (["--backend", "onnx"], ["--backend onnx", "torch, openvino or auto"]),
    (["--set", "backend=onnx"], ["--backend onnx", "torch, openvino or auto"]),
])
def test_what_openvino_cannot_run_is_refused_before_loading(sdcli, tiny, tmp_path, args, words):
    r = sdcli("txt2img", "--model", tiny(), *FAST, *args, "--outdir", tmp_path)
    assert r.one_error(2, *words) and r.loads == 0


LARGE = 3 * 2**30  # bytes: SD 1.5's UNet in fp32


def test_without_the_openvino_package_the_error_says_how_to_install_it(sdcli, tiny, tmp_path, monkeypatch):
    from sdcli import backends

    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--backend", "openvino", "--outdir", tmp_path)
    assert r.one_error(2, "--backend openvino", "pip install 'sdcli[openvino]'") and r.loads == 0
    monkeypatch.setattr("sdcli.plan.unet_bytes", lambda source: LARGE)  # a UNet auto would convert
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--backend", "auto", "--dry-run", "--outdir", tmp_path)
    assert r.code == 0 and "backend torch (--backend auto: the openvino package is not installed)" in r.err


def test_backend_is_a_config_key_auto_picks_openvino_on_the_cpu_and_dry_run_shows_it(sdcli, tiny, tmp_path, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text("backend: openvino\n")
    r = sdcli("txt2img", "--model", tiny(), "--config", config, "--dry-run", "--outdir", tmp_path / "o")
    assert r.code == 0 and "backend openvino" in r.err, r.err
    # the default is auto: the tiny model's small UNet stays on torch, and the log says why
    r = sdcli("txt2img", "--model", tiny(), "--dry-run", "--outdir", tmp_path / "o")
    assert re.search(r"backend torch \(--backend auto: a UNet of \d+ MiB runs faster on torch than converted\)", r.err), r.err
    r = sdcli("config", "show")
    assert 'backend: "auto"' in r.out
    monkeypatch.setattr("sdcli.plan.unet_bytes", lambda source: LARGE)  # as SD 1.5's 3.4 GB UNet
    r = sdcli("txt2img", "--model", tiny(), "--dry-run", "--outdir", tmp_path / "o")
    assert "backend openvino (UNet and VAE through OpenVINO; --backend auto: the device is the CPU" in r.err
    r = sdcli("txt2img", "--model", tiny(), "--compile", "--dry-run", "--outdir", tmp_path / "o")
    assert "backend torch (--backend auto: --compile needs torch)" in r.err
    r = sdcli("txt2img", "--model", tiny(), "--backend", "torch", "--dry-run", "--outdir", tmp_path / "o")
    assert "backend torch" in r.err and "auto" not in r.err.split("backend torch", 1)[1].splitlines()[0]


def test_auto_weighs_the_unet_size():
    from sdcli import backends
    from sdcli.config import RunConfig

    cfg = RunConfig(backend="auto")
    assert backends.choose(cfg, "cpu", [], None).name == "torch"
    assert backends.choose(cfg, "cpu", [], backends.OPENVINO_MIN_UNET_BYTES - 1).name == "torch"
    assert backends.choose(cfg, "cpu", [], LARGE).name == ("openvino" if backends.openvino_installed() else "torch")
    assert backends.choose(cfg, "cuda", [], LARGE).name == "torch"


def test_loras_are_fused_before_conversion_and_are_part_of_the_cache_key(sdcli, tiny, tmp_path, fresh_cache):
    from concept_files import make_lora

    lora = make_lora(tiny(), tmp_path / "style.safetensors", seed=1)
    torch_run = run(sdcli, tmp_path / "torch", "txt2img", tiny(), "--backend", "torch", "--lora", lora, "--fuse-lora")
    assert "LoRAs fused" in torch_run.err
    r = run(sdcli, tmp_path / "ov", "txt2img", tiny(), "--backend", "openvino", "--lora", lora)
    assert "LoRAs fused" in r.err and "openvino: unet converted" in r.err
    a, b = (pixels(tmp_path / name / "samples" / "00000.png") for name in ("torch", "ov"))
    assert abs(a - b).max() <= MAX_DIFF
    r = run(sdcli, tmp_path / "ov-half", "txt2img", tiny(), "--backend", "openvino", "--lora", f"{lora}:0.5")
    assert "openvino: unet converted" in r.err and "openvino: vae-decoder cached" in r.err  # another UNet, same VAE
    # the same LoRA again: its fused UNet is cached, but the torch weights are read (the LoRA's text-encoder side
    # and the fusing need them)
    r = run(sdcli, tmp_path / "ov-again", "txt2img", tiny(), "--backend", "openvino", "--lora", lora)
    assert "openvino: unet cached" in r.err and "converted" not in r.err and "not read" not in r.err
    assert (pixels(tmp_path / "ov-again" / "samples" / "00000.png") == b).all()
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "lora": f"{lora}:0.5"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--from-file", rows, "--backend", "openvino",
              "--outdir", tmp_path / "rows")
    assert r.one_error(2, "--backend openvino", "different LoRA sets") and r.loads == 0


def damage(folder: Path, how: str) -> None:
    """Damage a cache entry as a killed copy, a full disk, a bad sector or a stray edit would."""
    import hashlib

    if how == "truncated":
        with open(folder / "unet.bin", "r+b") as f:
            f.truncate(100)
    elif how == "changed":  # same size, other bytes
        data = bytearray((folder / "unet.bin").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "unet.bin").write_bytes(bytes(data))
    elif how == "no meta":
        (folder / "meta.json").unlink()
    else:  # files that match their meta.json but that OpenVINO cannot read
        (folder / "unet.xml").write_text("<net>")
        meta = json.loads((folder / "meta.json").read_text())
        meta["files"]["unet.xml"] = {"size": 5, "sha256": hashlib.sha256(b"<net>").hexdigest()}
        (folder / "meta.json").write_text(json.dumps(meta))


def test_a_damaged_cache_entry_is_detected_and_converted_again(sdcli, tiny, tmp_path, fresh_cache):
    run(sdcli, tmp_path / "first", "txt2img", tiny(), "--backend", "openvino")
    first = pixels(tmp_path / "first" / "samples" / "00000.png")
    for how in ("truncated", "changed", "no meta", "unreadable xml"):
        damage(next(fresh_cache.glob("*/unet.xml")).parent, how)
        r = run(sdcli, tmp_path / how, "txt2img", tiny(), "--backend", "openvino")
        assert "openvino: the cached unet" in r.err and "is damaged" in r.err, (how, r.err)
        assert "openvino: unet converted" in r.err and "openvino: vae-decoder cached" in r.err, how
        assert (pixels(tmp_path / how / "samples" / "00000.png") == first).all(), how
    r = run(sdcli, tmp_path / "last", "txt2img", tiny(), "--backend", "openvino")
    assert "openvino: unet cached" in r.err and "is damaged" not in r.err


def test_a_conversion_that_differs_from_torch_is_refused_and_not_cached(sdcli, tiny, tmp_path, fresh_cache,
                                                                       monkeypatch):
    from sdcli import openvino_backend

    monkeypatch.setattr(openvino_backend, "TOLERANCE", -1.0)  # every difference is too large
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--backend", "openvino", "--outdir", tmp_path / "o")
    assert r.one_error(1, "--backend openvino", "the converted unet differs from torch", "--backend torch")
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())
    assert not list(tmp_path.glob("o/samples/*.png"))


def test_an_unwritable_cache_costs_a_conversion_per_run_but_the_run_works(sdcli, tiny, tmp_path, monkeypatch):
    from sdcli import openvino_cache

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(openvino_cache, "root", lambda: tmp_path / "a-file" / "openvino")
    r = run(sdcli, tmp_path / "o", "txt2img", tiny(), "--backend", "openvino")
    assert "openvino: cannot write the cache" in r.err and "SDCLI_CACHE" in r.err
    assert "openvino: unet converted" in r.err and manifest(tmp_path / "o")[0]["backend"] == "openvino"


def test_cache_writes_are_atomic_and_the_first_writer_wins(fresh_cache):
    from sdcli import openvino_cache

    def writer(text):
        def write(folder):
            (folder / "unet.xml").write_text(text)
            (folder / "unet.bin").write_bytes(text.encode() * 10)
            return {"by": text}
        return write

    key = openvino_cache.key_of({"weights": "w"})
    assert openvino_cache.lookup(key, "unet") == (None, None)
    first = openvino_cache.store(key, "unet", writer("first"))
    second = openvino_cache.store(key, "unet", writer("second"))  # a concurrent run that finished later
    assert first == second and first.read_text() == "first"
    assert openvino_cache.lookup(key, "unet") == (first, None)
    # a conversion killed half-way left its temporary folder: the next store removes it (its process is gone)
    dead = openvino_cache.root() / f"{openvino_cache.TMP}{openvino_cache.host_tag()}-{2**22 + 12345}-dead"
    dead.mkdir()
    (dead / "unet.bin").write_bytes(b"half")
    openvino_cache.store(openvino_cache.key_of({"weights": "v"}), "unet", writer("other"))
    assert sorted(p.name for p in fresh_cache.iterdir()) == sorted([key, openvino_cache.key_of({"weights": "v"})])
    assert os.access(first, os.R_OK)
