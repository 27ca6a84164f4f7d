"""Watermark and safety checker, as functions."""

from __future__ import annotations

import numpy as np
import pytest


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _high_contrast(size=256):
    from PIL import Image

    rng = np.random.default_rng(1)
    a = np.where(rng.random((size, size, 3)) > 0.5, 255, 0).astype(np.uint8)  # saturated pixels wrap in the library
    return Image.fromarray(a)


@pytest.mark.parametrize("payload", [b"SDV2", b"TEST", b"\x00\xff\x10\x01"])
def test_watermark_round_trips_at_256(payload):
    from sdcli.postprocess import apply_watermark, decode_watermark

    rng = np.random.default_rng(0)
    from PIL import Image

    image = Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8))
    assert decode_watermark(apply_watermark(image, payload), len(payload)) == payload


def test_watermark_equals_the_library_and_its_cost_is_measured():
    """sdcli embeds exactly what invisible-watermark's encoder embeds (it only clips where the library would
    let a value wrap around, which none of these images trigger); the PSNR it costs is printed."""
    import cv2
    from imwatermark import WatermarkEncoder
    from PIL import Image

    from sdcli.postprocess import apply_watermark, decode_watermark

    enc = WatermarkEncoder()
    enc.set_watermark("bytes", b"SDV2")
    rng = np.random.default_rng(2)
    smooth = np.asarray(Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).resize((256, 256),
                                                                                              Image.Resampling.BICUBIC))
    for name, array in (("smooth", smooth), ("high-contrast", np.asarray(_high_contrast()))):
        image = Image.fromarray(array)
        ours = np.asarray(apply_watermark(image, b"SDV2"))
        library = cv2.cvtColor(enc.encode(cv2.cvtColor(array, cv2.COLOR_RGB2BGR), "dwtDct"), cv2.COLOR_BGR2RGB)
        assert np.array_equal(ours, library)
        print(f"watermark PSNR ({name} 256x256): {_psnr(array, ours):.1f} dB")
    assert _psnr(smooth, apply_watermark(Image.fromarray(smooth), b"SDV2")) > 25  # measured 29.3 dB
    assert decode_watermark(apply_watermark(Image.fromarray(smooth), b"SDV2"), 4) == b"SDV2"


def test_small_images_cannot_be_watermarked():
    from sdcli.postprocess import can_watermark

    assert can_watermark(256, 256) and can_watermark(512, 128)
    assert not can_watermark(255, 256) and not can_watermark(64, 64)


def test_safety_checker_flags_and_passes(tmp_path):
    from PIL import Image

    from sdcli import tiny
    from sdcli.postprocess import load_safety_checker

    images = [Image.new("RGB", (64, 64), (i * 60, 20, 200)) for i in range(3)]
    normal = load_safety_checker(str(tiny.build("txt2img", tmp_path / "normal")), None, "cpu", None)
    assert normal.check(images) == [False, False, False]
    flagging = load_safety_checker(str(tiny.build("txt2img", tmp_path / "flag", flag_everything=True)), None,
                                   "cpu", None)
    assert flagging.check(images) == [True, True, True]
