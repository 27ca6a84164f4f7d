"""Files and metadata (issue 9): file modes under the umask; PNG/JPEG/WebP metadata read by third-party
readers (sd-parsers, sd-prompt-reader, AUTOMATIC1111's own reading code); A1111 keys (Eta DDIM, Model hash,
grids' parameters, input images by name and sha256); --format and --quality for every subcommand."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import piexif
import piexif.helper
import pytest
from helpers import FAST, manifest
from PIL import Image

from sdcli import hashes, outputs, postprocess
from sdcli.models import Source
from sdcli.records import parse_a1111

ONE = ["--n_samples", 1, "--n_iter", 1]
FORMATS = ["png", "jpg", "webp"]
PROMPT = "a café in Kyōto, «snow» ☃ — 日本の雪"
NEGATIVE = "blurry, ugly"


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def noise(path: Path, w: int, h: int, seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path


def a1111_read(path) -> str | None:
    """AUTOMATIC1111's modules/images.py read_info_from_image: PNG text ``parameters``, else EXIF
    UserComment through piexif (where sdcli 0.1's int8u UserComment crashed)."""
    with Image.open(path) as im:
        items = dict(im.info)
    geninfo = items.pop("parameters", None)
    if "exif" in items:
        exif = piexif.load(items["exif"])
        comment = (exif or {}).get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
        try:
            comment = piexif.helper.UserComment.load(comment)
        except ValueError:
            comment = comment.decode("utf8", errors="ignore")
        if comment:
            geninfo = comment
    return geninfo


def unet_sha256(folder) -> str:
    return sha(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors")


# --- file modes --------------------------------------------------------------------------------------------

@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}


def test_every_file_gets_the_umask_mode(sdcli, tiny, tmp_path, umask):
    """Samples, grids, manifest, resume lock (txt2img), depth maps (depth2img), --output files: all as open()."""
    want = 0o666 & ~umask
    out = tmp_path / "out"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--resume", "--outdir", out)
    assert r.code == 0, r.err
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--format", "jpg", "--outdir", out)
    assert r.code == 0, r.err
    image = noise(tmp_path / "in.png", 64, 64)
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--save-depth", "--steps", 2,
              "--scheduler", "ddim", *ONE, "--outdir", out, "--skip-grid", "--no-safety-checker")
    assert r.code == 0, r.err
    edit = tmp_path / "edit" / "x.webp"
    edit.parent.mkdir()
    r = sdcli("instruct-edit", "--model", tiny("instruct-edit"), "--image", image, "--prompt", "snow", "--steps", 2,
              "--scheduler", "ddim", "--output", edit, "--no-safety-checker")
    assert r.code == 0, r.err
    found = {**modes(out), **{f"edit/{k}": v for k, v in modes(edit.parent).items()}}
    for name in ("samples/00000.png", "samples/00002.jpg", "samples/00003.png", "samples/00003-depth.png",
                 "grid-0000.png", "grid-0001.jpg", "manifest.jsonl", ".sdcli-resume.lock", "edit/x.webp"):
        assert name in found, sorted(found)
    assert {k: oct(v) for k, v in found.items() if v != want} == {}


def test_hash_cache_gets_the_umask_mode(tmp_path, umask):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    hashes.files_sha256([weights], tmp_path / "cache" / "hashes.json")
    assert (tmp_path / "cache" / "hashes.json").stat().st_mode & 0o777 == 0o666 & ~umask


# --- third-party readers, every format -----------------------------------------------------------------------

def check_sd_parsers(path, size: str, hash10: str):
    from sd_parsers import ParserManager

    info = ParserManager().parse(str(path))
    assert info is not None and info.generator.name == "AUTOMATIC1111", path
    sampler = info.samplers[0]
    assert [p.value for p in sampler.prompts] == [PROMPT]
    assert [p.value for p in sampler.negative_prompts] == [NEGATIVE]
    assert sampler.name == "Euler"
    assert sampler.parameters == {"steps": "2", "cfg_scale": "6.5", "seed": "1234"}
    assert info.metadata["Size"] == size
    assert (sampler.model.name, sampler.model.hash) == ("tiny", hash10)


def check_sd_prompt_reader(path, size: str):
    from sd_prompt_reader.image_data_reader import ImageDataReader

    reader = ImageDataReader(str(path))
    assert reader.status.name == "READ_SUCCESS" and reader.tool == "A1111 webUI", path
    assert (reader.positive, reader.negative) == (PROMPT, NEGATIVE)
    assert reader.parameter == {"model": "tiny", "sampler": "Euler", "seed": "1234", "cfg": "6.5", "steps": "2",
                                "size": size}


@pytest.mark.parametrize("fmt", FORMATS)
def test_third_party_readers_read_samples_and_grids(sdcli, tiny, tmp_path, fmt):
    out = tmp_path / "out"
    r = sdcli("txt2img", "--model", "tiny", "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", 2,
              "--scale", 6.5, "--seed", 1234, "--W", 96, "--H", 64, "--scheduler", "euler", "--n_samples", 2,
              "--n_iter", 1, "--format", fmt, "--outdir", out)
    assert r.code == 0, r.err
    sample, grid = out / f"samples/00000.{fmt}", out / f"grid-0000.{fmt}"
    with Image.open(sample) as im:
        assert im.format == outputs.FORMATS[f".{fmt}"] and im.size == (96, 64)
    hash10 = unet_sha256(tiny())[:10]
    for path in (sample, grid):  # a grid carries its first image's parameters, as A1111's grids do
        check_sd_parsers(path, "96x64", hash10)
        check_sd_prompt_reader(path, "96x64")
        p = parse_a1111(a1111_read(path))
        assert (p["prompt"], p["Negative prompt"], p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"], p["Size"],
                p["Model"], p["Model hash"]) == (PROMPT, NEGATIVE, "2", "Euler", "6.5", "1234", "96x64", "tiny", hash10)
    # sdcli's own reader gives the record back exactly (Unicode included), as the manifest has it
    line = manifest(out)[0]
    record = json.loads(outputs.read_metadata(str(sample))["sdcli"])
    assert record == {k: v for k, v in line.items() if k not in ("path", "sha256", "status")}
    assert record["prompt"] == PROMPT and record["model_sha256"] == unet_sha256(tiny())
    grid_record = json.loads(outputs.read_metadata(str(grid))["sdcli"])
    assert grid_record["images"] == 2 and grid_record["model_sha256"] == unet_sha256(tiny())


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_exif_user_comment_is_undefined_and_unicode_survives(suffix):
    """A1111 writes UserComment as UNDEFINED (piexif gives bytes back; an int8u tag gives a tuple, which
    crashed A1111's reader and sd-prompt-reader); the sdcli record keeps every character."""
    record = {"prompt": "café ☃ 日本 🎨 \u2028 \"q\" \\", "seed": 1, "nested": {"ü": [1.5, None]}}
    parameters = "café ☃ 日本 🎨\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 1"
    data = outputs.encode_image(Image.new("RGB", (32, 32), "red"), suffix, parameters, record)
    with Image.open(__import__("io").BytesIO(data)) as im:
        raw = piexif.load(im.info["exif"])
    comment = raw["Exif"][piexif.ExifIFD.UserComment]
    assert isinstance(comment, bytes) and comment.startswith(b"UNICODE\0")
    assert piexif.helper.UserComment.load(comment) == parameters
    assert json.loads(raw["0th"][piexif.ImageIFD.ImageDescription]) == record


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_read_metadata_round_trips_unicode(tmp_path, suffix):
    record = {"prompt": "naïve 雪 🎨", "negative_prompt": "Ω", "seed": 3}
    parameters = "naïve 雪 🎨\nNegative prompt: Ω\nSteps: 2, Sampler: DDIM, CFG scale: 7, Seed: 3"
    path = tmp_path / f"x{suffix}"
    path.write_bytes(outputs.encode_image(Image.new("RGB", (16, 16)), suffix, parameters, record))
    found = outputs.read_metadata(str(path))
    assert found["parameters"] == parameters and json.loads(found["sdcli"]) == record


def test_jpeg_exif_past_64k_drops_the_record_and_keeps_the_image():
    """A JPEG EXIF segment holds 64 KiB: a huge prompt leaves the record out of EXIF (the manifest has it)."""
    prompt = "word " * 5000  # 25000 chars: 50 KB as UTF-16, plus the record's 25 KB
    data = outputs.encode_image(Image.new("RGB", (16, 16)), ".jpg", prompt + "\nSteps: 2, Seed: 1, Size: 16x16",
                                {"prompt": prompt})
    with Image.open(__import__("io").BytesIO(data)) as im:
        raw = piexif.load(im.info["exif"])
    assert piexif.helper.UserComment.load(raw["Exif"][piexif.ExifIFD.UserComment]).startswith("word word")
    assert piexif.ImageIFD.ImageDescription not in raw["0th"]


# --- A1111 keys ----------------------------------------------------------------------------------------------

def test_ddim_eta_is_written_as_eta_ddim(sdcli, tiny, tmp_path):
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--eta", 0.5, "--outdir", tmp_path, "--skip-grid")
    assert r.code == 0, r.err
    p = parse_a1111(outputs.read_metadata(str(tmp_path / "samples/00000.png"))["parameters"])
    assert p["Eta DDIM"] == "0.5" and "Eta" not in p


def test_input_image_is_recorded_by_name_and_sha256(sdcli, tiny, tmp_path):
    """Not by an absolute path of the user's machine: in the embedded record, the A1111 text and the manifest."""
    image = noise(tmp_path / "inputs" / "photo 1.png", 64, 64)
    out = tmp_path / "out"
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, "--steps", 2, "--scheduler", "ddim", *ONE,
              "--outdir", out, "--no-safety-checker", "--format", "webp")
    assert r.code == 0, r.err
    texts = outputs.read_metadata(str(out / "samples/00000.webp"))
    record, params = json.loads(texts["sdcli"]), parse_a1111(texts["parameters"])
    line = manifest(out)[0]
    for rec in (record, line):
        assert (rec["input_image"], rec["input_image_sha256"]) == ("photo 1.png", sha(image))
    assert (params["Init image"], params["Init image sha256"]) == ("photo 1.png", sha(image))
    for text in (texts["sdcli"], texts["parameters"], (out / "manifest.jsonl").read_text()):
        assert str(tmp_path) not in text


def test_model_hash_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x" * 3000)
    cache = tmp_path / "hashes.json"
    want = hashlib.sha256(b"x" * 3000).hexdigest()
    assert hashes.files_sha256([weights], cache) == want

    def no_hashing(*a):
        raise AssertionError("hashed again")

    monkeypatch.setattr(hashes.hashlib, "sha256", no_hashing)
    assert hashes.files_sha256([weights], cache) == want  # from the cache, the file is not read
    monkeypatch.undo()
    weights.write_bytes(b"y" * 3000)  # same size, new mtime
    os.utime(weights, ns=(1, 1))
    assert hashes.files_sha256([weights], cache) == hashlib.sha256(b"y" * 3000).hexdigest()


def test_model_hash_sources(tmp_path, tiny):
    single = tmp_path / "m.safetensors"
    single.write_bytes(b"abc")
    assert hashes.model_sha256(Source("single_file", str(single), "m")) == hashlib.sha256(b"abc").hexdigest()
    assert hashes.model_sha256(Source("folder", str(tiny()), "tiny")) == unet_sha256(tiny())
    # a folder holding only an fp16 variant, or a sharded UNet
    fp16 = tmp_path / "fp16" / "unet"
    fp16.mkdir(parents=True)
    (fp16 / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"half")
    assert hashes.weights_files(fp16.parent) == [fp16 / "diffusion_pytorch_model.fp16.safetensors"]
    sharded = tmp_path / "sharded" / "unet"
    sharded.mkdir(parents=True)
    names = ["diffusion_pytorch_model-00002-of-00002.safetensors", "diffusion_pytorch_model-00001-of-00002.safetensors"]
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": names[0], "b": names[1], "c": names[0]}}))
    for i, n in enumerate(sorted(names)):
        (sharded / n).write_bytes(bytes([i]) * 10)
    assert hashes.model_sha256(Source("folder", str(sharded.parent), "s")) == hashlib.sha256(
        bytes([0]) * 10 + bytes([1]) * 10).hexdigest()
    assert hashes.model_sha256(Source("folder", str(tmp_path / "none"), "x")) is None


# --- --format and --quality ------------------------------------------------------------------------------------

def test_numbering_and_resume_across_formats(sdcli, tiny, tmp_path):
    out = tmp_path / "out"
    base = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--outdir", out]
    assert sdcli(*base).code == 0
    r = sdcli(*base, "--prompt", "other", "--format", "jpg")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.png", "00001.png", "00002.jpg", "00003.jpg"]
    assert sorted(p.name for p in out.glob("grid-*")) == ["grid-0000.png", "grid-0001.jpg"]
    # a killed run's sample without its manifest line is recovered from its EXIF record
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:-1]))
    r = sdcli(*base, "--prompt", "other", "--format", "webp", "--resume", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert (summary["recovered"], summary["skipped"], summary["generated"]) == (1, 2, 0)
    assert manifest(out)[-1]["path"] == "samples/00003.jpg" and manifest(out)[-1]["recovered"] is True


def test_grid_of_a_resumed_run_carries_its_first_images_parameters(sdcli, tiny, tmp_path):
    """The first image was made by an earlier run (--resume): the grid's parameters are still its own."""
    base = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--seed", 42, "--outdir", tmp_path, "--resume"]
    assert sdcli(*base, "--n_iter", 1, "--skip-grid").code == 0
    r = sdcli(*base, "--n_iter", 2, "--format", "jpg", "--json")
    assert r.code == 0, r.err
    assert (json.loads(r.out)["skipped"], json.loads(r.out)["generated"]) == (1, 1)
    p = parse_a1111(a1111_read(tmp_path / "grid-0000.jpg"))
    assert (p["Seed"], p["Steps"], p["Model hash"]) == ("42", "2", unet_sha256(tiny())[:10])


@pytest.mark.parametrize("task", ["img2img", "inpaint", "depth2img", "instruct-edit"])
def test_every_subcommand_writes_the_format(sdcli, tiny, tmp_path, task):
    image = noise(tmp_path / "in.png", 64, 64)
    extra = ["--mask", image] if task == "inpaint" else []
    out = tmp_path / "out"
    r = sdcli(task, "--model", tiny(task), "--image", image, *extra, "--prompt", "snow", "--steps", 2,
              "--scheduler", "ddim", "--n_samples", 2, "--n_iter", 1, "--outdir", out, "--no-safety-checker",
              "--format", "jpg", "--quality", 80)
    assert r.code == 0, r.err
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.jpg", "00001.jpg"]
    for path in (out / "samples/00000.jpg", out / "grid-0000.jpg"):
        with Image.open(path) as im:
            assert im.format == "JPEG"
        assert parse_a1111(a1111_read(path))["prompt"] == "snow"


def test_quality_sets_the_jpeg_quality(tmp_path):
    image = Image.open(noise(tmp_path / "n.png", 128, 128))
    sizes = {q: len(outputs.encode_image(image, ".jpg", "", None, q)) for q in (30, 95)}
    assert sizes[30] < sizes[95] * 0.6
    with Image.open(__import__("io").BytesIO(outputs.encode_image(image, ".jpg", "", None))) as im:
        assert im.layers == 3 and im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)  # subsampling=0 (4:4:4)


def test_output_suffix_decides_its_format(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 64, 64)
    r = sdcli("instruct-edit", "--model", tiny("instruct-edit"), "--image", image, "--prompt", "snow", "--steps", 2,
              "--scheduler", "ddim", "--output", tmp_path / "y.webp", "--format", "jpg", "--no-safety-checker")
    assert r.code == 0, r.err
    with Image.open(tmp_path / "y.webp") as im:
        assert im.format == "WEBP"


@pytest.mark.parametrize("args,words", [
    (["--format", "gif"], ["--format gif", "png, jpg or webp"]),
    (["--quality", 0], ["--quality 0", "between 1 and 100"]),
    (["--quality", 101], ["--quality 101"]),
    (["--set", "format=tiff"], ["--format tiff"]),
])
def test_bad_format_or_quality_is_one_usage_error(sdcli, tmp_path, args, words):
    r = sdcli("txt2img", "--model", "tiny", *args, "--outdir", tmp_path, "--dry-run")
    assert r.one_error(2, *words) and r.loads == 0


def test_format_spellings(sdcli, tmp_path):
    from sdcli import config

    assert config.load("txt2img", flags={"format": "JPEG"}).format == "jpg"
    assert config.load("txt2img", sets=["format=.webp", "quality=70"]).format == "webp"
    assert config.load("txt2img").quality == 95


# --- the watermark through JPEG --------------------------------------------------------------------------------

@pytest.mark.parametrize("side,payload,suffix,quality", [
    (256, b"SDV2", ".jpg", 95), (512, b"SDV2", ".jpg", 95), (512, b"StableDiffusionV1", ".jpg", 95),
    (256, b"SDV2", ".webp", 100), (512, b"StableDiffusionV1", ".webp", 100)])
def test_watermark_survives_default_jpeg_and_lossless_webp(tmp_path, side, payload, suffix, quality):
    """The README's claims (measured on 10 noisy images each: 256 SDV2 10/10, 512 SDV2 10/10, 512
    StableDiffusionV1 8/10 as JPEG at the default quality 95; this seed is one that decodes)."""
    image = Image.open(noise(tmp_path / "n.png", side, side, seed=side))
    marked = postprocess.apply_watermark(image, payload)
    path = tmp_path / f"x{suffix}"
    path.write_bytes(outputs.encode_image(marked, suffix, "", None, quality))
    with Image.open(path) as im:
        assert postprocess.decode_watermark(im, len(payload)) == payload
        if suffix == ".webp":  # --quality 100: lossless WebP
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(marked.convert("RGB")))


def test_lossy_webp_loses_the_watermark_and_the_run_says_so(sdcli, tiny, tmp_path):
    marked = postprocess.apply_watermark(Image.open(noise(tmp_path / "n.png", 256, 256)), b"SDV2")
    with Image.open(__import__("io").BytesIO(outputs.encode_image(marked, ".webp", "", None, 95))) as im:
        assert postprocess.decode_watermark(im, 4) != b"SDV2"
    base = ["txt2img", "--model", tiny(), *FAST, *ONE, "--format", "webp", "--outdir", tmp_path / "o", "--skip-grid"]
    r = sdcli(*base)
    assert r.code == 0 and "lossy WebP erases the invisible watermark" in r.err
    r = sdcli(*base, "--quality", 100)
    assert r.code == 0 and "WebP" not in r.err
    r = sdcli(*base, "--no-watermark")
    assert r.code == 0 and "WebP" not in r.err
