"""Speed and memory options: each is applied to the loaded pipeline, keeps the image (within float noise),
and the CUDA-only ones are a clear error elsewhere. Timings are measured by `make bench`, not here."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import FAST, pixels


def _generator(tiny, tmp_path, **overrides):
    from sdcli import config
    from sdcli.pipeline import LoadedPipeline
    from sdcli.plan import plan
    from sdcli.progress import Reporter

    cfg = config.load("txt2img", flags={"model": str(tiny()), "outdir": str(tmp_path), "steps": 2, "H": 64, "W": 64,
                                        "n_samples": 2, "n_iter": 2, "safety_checker": False, **overrides})
    p = plan(cfg)
    return p, LoadedPipeline(p, Reporter(quiet=True))


def test_options_are_applied_to_the_pipeline(tiny, tmp_path):
    import torch
    from diffusers.models.attention_processor import SlicedAttnProcessor

    _, plain = _generator(tiny, tmp_path)
    assert not plain.pipe.vae.use_slicing and not plain.pipe.vae.use_tiling
    _, gen = _generator(tiny, tmp_path, attention_slicing=True, vae_slicing=True, vae_tiling=True, channels_last=True)
    assert gen.pipe.vae.use_slicing and gen.pipe.vae.use_tiling
    assert any(isinstance(p, SlicedAttnProcessor) for p in gen.pipe.unet.attn_processors.values())
    assert gen.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("flag", ["--attention-slicing", "--vae-slicing", "--vae-tiling", "--channels-last"])
def test_option_keeps_the_image(sdcli, tiny, tmp_path, flag):
    common = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--no-safety-checker"]
    assert sdcli(*common, "--outdir", tmp_path / "plain").code == 0
    r = sdcli(*common, flag, "--outdir", tmp_path / "opt")
    assert r.code == 0, r.err
    for name in ("00000.png", "00001.png"):
        diff = np.abs(pixels(tmp_path / "plain/samples" / name) - pixels(tmp_path / "opt/samples" / name)).max()
        print(f"{flag}: max pixel difference {diff}")
        assert diff <= 2  # the same computation in another order: float noise at most


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_is_cuda_only(sdcli, tiny, tmp_path, mode):
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--offload", mode, "--outdir", tmp_path)
    assert r.one_error(2, f"--offload {mode}", "CUDA")
    assert sdcli("txt2img", "--offload", "disk").one_error(2, "--offload disk")


def test_text_encodings_are_computed_once_per_prompt(tiny, tmp_path):
    p, gen = _generator(tiny, tmp_path, n_iter=3)
    calls = []
    encode = gen.pipe.encode_prompt
    gen.pipe.encode_prompt = lambda *a, **k: calls.append(a[0]) or encode(*a, **k)
    for batch in p.batches:
        gen.generate(batch)
    # (the pipeline passes our embeddings through encode_prompt too, with prompt=None)
    assert len(p.batches) == 3 and [c for c in calls if c is not None] == [p.jobs[0].prompt]


@pytest.mark.slow
def test_compile_reports_its_time_and_keeps_the_image(sdcli, tiny, tmp_path):
    common = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 2, "--no-safety-checker"]
    assert sdcli(*common, "--outdir", tmp_path / "plain").code == 0
    r = sdcli(*common, "--compile", "--outdir", tmp_path / "compiled")
    assert r.code == 0, r.err
    assert r.err.count("compiled the UNet in") == 1  # once per batch shape, not per batch
    diff = np.abs(pixels(tmp_path / "plain/samples/00001.png") - pixels(tmp_path / "compiled/samples/00001.png")).max()
    print(f"--compile: max pixel difference {diff}")
    assert diff <= 2
