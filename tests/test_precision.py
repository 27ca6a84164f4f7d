"""--precision auto: what it picks on which device, CPU and model, and that the log and the records say so."""

from __future__ import annotations

import pytest

from sdcli import precision
from sdcli.precision import BF16_MIN_UNET_BYTES, choose

from helpers import FAST, manifest

BIG = 3 * 2**30  # SD 1.5's UNet in fp32


@pytest.mark.parametrize("flags, weights, device, want", [
    ({"avx512_bf16", "avx512f"}, BIG, "cpu", "bf16"),
    ({"amx_bf16", "avx512_bf16"}, BIG, "cpu", "bf16"),
    ({"avx2", "fma"}, BIG, "cpu", "fp32"),              # bf16 would be emulated: many times slower
    ({"avx512_bf16"}, 2 * 2**20, "cpu", "fp32"),        # a small UNet: bf16 is slower (the demo model)
    ({"avx512_bf16"}, None, "cpu", "fp32"),             # size unknown (an uncached hub id)
    ({"avx512_bf16"}, BF16_MIN_UNET_BYTES, "cpu", "bf16"),
    (set(), BIG, "cuda", "fp16"),
    (set(), BIG, "cuda:1", "fp16"),
    ({"avx512_bf16"}, BIG, "mps", "fp32"),
])
def test_auto_rule(flags, weights, device, want):
    c = choose("auto", device, frozenset(flags), weights)
    assert c.precision == want
    assert c.auto.startswith(want)


@pytest.mark.parametrize("asked", ["fp32", "bf16", "fp16"])
def test_a_set_precision_is_kept_and_not_called_auto(asked):
    assert choose(asked, "cpu", frozenset({"avx512_bf16"}), BIG) == precision.Choice(asked, "")


def test_reasons_name_the_instruction_set_and_size():
    assert "amx_bf16" in choose("auto", "cpu", frozenset({"amx_bf16", "avx512_bf16"}), BIG).auto
    assert "2 MiB" in choose("auto", "cpu", frozenset({"avx512_bf16"}), 2 * 2**20).auto
    assert "no bf16 instructions" in choose("auto", "cpu", frozenset({"avx2"}), BIG).auto


def test_cpu_flags_come_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))
    precision.cpu_flags.cache_clear()
    try:
        assert precision.bf16_instructions() == "avx512_bf16"
    finally:
        precision.cpu_flags.cache_clear()


def test_unet_bytes_of_a_folder(tiny):
    from sdcli.models import Source

    size = precision.unet_bytes(Source("folder", str(tiny()), "tiny"))
    assert size and 0 < size < BF16_MIN_UNET_BYTES


@pytest.mark.parametrize("bf16_cpu", [True, False])
def test_auto_on_a_large_model_is_logged_and_recorded(sdcli, tiny, tmp_path, monkeypatch, bf16_cpu):
    """A bf16 CPU with a (pretend) large UNet runs bf16 and says why in the log and the record; without the
    instructions the same run is fp32 and says that."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"} if bf16_cpu else {"avx2"}))
    monkeypatch.setattr("sdcli.models.unet_bytes", lambda source: BIG)
    r = sdcli("txt2img", "--model", tiny(), "--prompt", "a cat", *FAST, "--n_samples", 1, "--n_iter", 1,
              "--outdir", tmp_path, "--device", "cpu")
    assert r.code == 0, r.err
    want = "bf16" if bf16_cpu else "fp32"
    assert f"--precision auto: {want}" in r.err
    rec = manifest(tmp_path)[0]
    assert rec["precision"] == {"bf16": "bfloat16", "fp32": "float32"}[want]
    assert rec["precision_auto"].startswith(want)


def test_a_set_precision_is_recorded_without_auto(sdcli, tiny, tmp_path):
    r = sdcli("txt2img", "--model", tiny(), "--prompt", "a cat", *FAST, "--n_samples", 1, "--n_iter", 1,
              "--outdir", tmp_path, "--precision", "fp32")
    assert r.code == 0, r.err
    rec = manifest(tmp_path)[0]
    assert rec["precision"] == "float32" and rec["precision_auto"] is None
    assert "--precision auto" not in r.err


def test_auto_keeps_a_small_model_in_fp32(sdcli, tiny, tmp_path):
    """The tiny model's UNet is far below the bf16 threshold: fp32 whatever the CPU, and the record says why."""
    r = sdcli("txt2img", "--model", tiny(), "--prompt", "a cat", *FAST, "--n_samples", 1, "--n_iter", 1,
              "--outdir", tmp_path)
    assert r.code == 0, r.err
    rec = manifest(tmp_path)[0]
    assert rec["precision"] == "float32" and rec["precision_auto"].startswith("fp32")
