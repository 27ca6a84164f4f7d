"""The image-conditioned subcommands (img2img, inpaint, depth2img, instruct-edit) end to end, through the
real CLI entry point on the tiny models: outputs, manifest, metadata, strength, sizes, masks, depth maps,
the edit_cli.py spellings, many inputs, and bad input images."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import manifest, pixels, snapshot
from PIL import Image

from sdcli.records import parse_a1111

DDIM = ["--scheduler", "ddim"]
ONE = ["--n_samples", 1, "--n_iter", 1]
TASKS = ["img2img", "inpaint", "depth2img", "instruct-edit"]
DEFAULT_STRENGTH = {"img2img": 0.75, "inpaint": 1.0, "depth2img": 0.8}
DEFAULT_SCALE = {"img2img": "5.0"}  # CompVis scripts/img2img.py; the others 7.5


# --- helpers -------------------------------------------------------------------------------------------

def noise(path: Path, w: int, h: int, seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image of w x h saved to path."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (h, w, channels) if channels else (h, w)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    if mode == "RGBA":
        arr[..., 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def mask_image(path: Path, w: int, h: int, mode: str = "L", fill: str = "box") -> Path:
    """A mask: white box in the middle ("box"), all white ("white") or all black ("black")."""
    a = np.zeros((h, w), np.uint8)
    if fill == "white":
        a[:] = 255
    elif fill == "box":
        a[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    im = Image.fromarray(a, "L")
    if mode == "1":
        im = im.convert("1")
    elif mode in ("RGB", "RGBA"):
        im = im.convert(mode)
    assert im.mode == mode
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def gradient(path: Path, w: int, h: int) -> Path:
    """A depth map (white = near) with real depth variation."""
    x = np.linspace(0, 255, w)[None, :]
    y = np.linspace(0, 120, h)[:, None]
    Image.fromarray((x * 0.6 + y * 0.4).round().astype(np.uint8), "L").save(path)
    return path


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def texts(path) -> dict:
    with Image.open(path) as im:
        return dict(im.text)


def params(path) -> dict:
    return parse_a1111(texts(path)["parameters"])


def size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def dry_sizes(sdcli, *args) -> list[tuple[int, int]]:
    """Output sizes of a --dry-run (no model is loaded)."""
    r = sdcli(*args, "--dry-run")
    assert r.code == 0, r.err
    assert r.loads == 0  # checked before the model loads
    return [(j["W"], j["H"]) for j in map(json.loads, r.out.splitlines())]


def task_inputs(task: str, tmp_path: Path, w: int = 96, h: int = 64) -> list:
    """The input arguments of a task for a w x h noise image (and a mask for inpaint)."""
    image = noise(tmp_path / "in" / "photo.png", w, h)
    args = ["--init-img" if task == "img2img" else "--image", image]
    if task == "inpaint":
        args += ["--mask", mask_image(tmp_path / "in" / "photo_mask.png", w, h)]
    if task == "instruct-edit":
        args += ["--prompt", "make it snowy"]
    return args


# --- every subcommand ----------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_each_task_samples_grid_manifest_and_metadata(sdcli, tiny, tmp_path, task):
    """Two images from one input: samples, grid, manifest (inputs and their hashes, task settings), the A1111
    parameters chunk, the task's default strength (denoising steps = int(steps x strength)), and the
    same seed giving the same pixels in a second run."""
    args = task_inputs(task, tmp_path)
    image = Path(args[1])
    runs = {}
    for name in ("a", "b"):
        out = tmp_path / name
        r = sdcli(task, "--model", tiny(task), *args, *DDIM, "--steps", 4, "--n_samples", 2, "--n_iter", 1,
                  "--seed", 7, "--outdir", out)
        assert r.code == 0, r.err
        runs[name] = out
    out = runs["a"]
    samples = sorted((out / "samples").iterdir())
    assert [p.name for p in samples] == ["00000.png", "00001.png"]
    assert size(samples[0]) == (96, 64)
    assert size(out / "grid-0000.png") == (2 * (96 + 2) + 2, 64 + 4)

    records = manifest(out)
    assert [rec["path"] for rec in records] == ["samples/00000.png", "samples/00001.png"]
    assert [rec["seed"] for rec in records] == [7, 8]
    strength = DEFAULT_STRENGTH.get(task)
    for rec, path in zip(records, samples):
        assert rec["task"] == task
        assert rec["input_image"] == image.name  # by name and sha256, never a path of the user's machine
        assert rec["input_image_sha256"] == sha(image)
        assert rec["sha256"] == sha(path)
        assert (rec["width"], rec["height"], rec["steps"], rec["batch_size"]) == (96, 64, 4, 2)
        if strength is not None:
            assert rec["strength"] == strength
            assert rec["denoising_steps"] == int(4 * strength)
        else:
            assert "strength" not in rec and rec["denoising_steps"] == 4
        if task == "inpaint":
            assert rec["mask"] == Path(args[3]).name and rec["mask_sha256"] == sha(args[3])
        else:
            assert "mask" not in rec
        if task == "instruct-edit":
            assert rec["image_guidance_scale"] == 1.5 and rec["prompt"] == "make it snowy"
        else:
            assert "image_guidance_scale" not in rec
        assert "depth_map" not in rec and "depth_path" not in rec

    p = params(samples[1])
    assert p["Steps"] == "4" and p["Sampler"] == "DDIM" and p["CFG scale"] == DEFAULT_SCALE.get(task, "7.5")
    assert p["Seed"] == "8" and p["Size"] == "96x64"
    if strength is not None:
        assert float(p["Denoising strength"]) == strength and "Image CFG scale" not in p
    else:
        assert p["Image CFG scale"] == "1.5" and "Denoising strength" not in p
    stored = json.loads(texts(samples[1])["sdcli"])
    assert stored["task"] == task and stored["input_image_sha256"] == sha(image) and stored["seed"] == 8

    for n in ("00000.png", "00001.png"):
        assert np.array_equal(pixels(runs["a"] / "samples" / n), pixels(runs["b"] / "samples" / n)), n
    assert not np.array_equal(pixels(samples[0]), pixels(samples[1]))  # seeds 7 and 8 differ


def test_img2img_watermark_on_256_output(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "big.png", 256, 256)
    out = tmp_path / "out"
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, *DDIM, "--steps", 2, "--strength", 0.5,
              *ONE, "--watermark-text", "TEST", "--outdir", out)
    assert r.code == 0, r.err
    sample = out / "samples" / "00000.png"
    assert size(sample) == (256, 256)
    rec = manifest(out)[0]
    assert rec["watermark"] == "TEST" and rec["denoising_steps"] == 1
    r = sdcli("watermark", "decode", sample, out / "grid-0000.png")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [f"{sample}: TEST", f"{out / 'grid-0000.png'}: TEST"]


def test_img2img_batched_image_regenerated_alone(sdcli, tiny, tmp_path):
    """Image k of a batched img2img run (seed+k) comes back alone from its recorded settings."""
    image = noise(tmp_path / "in.png", 64, 64)
    batch = tmp_path / "batch"
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, *DDIM, "--steps", 4, "--strength", 0.5,
              "--n_samples", 3, "--n_iter", 1, "--seed", 100, "--outdir", batch, "--skip-grid")
    assert r.code == 0, r.err
    rec = next(x for x in manifest(batch) if x["index"] == 2)
    assert rec["seed"] == 102 and rec["batch_size"] == 3
    alone = tmp_path / "alone"
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", tmp_path / rec["input_image"], "--prompt", rec["prompt"],
              "--seed", rec["seed"], "--steps", rec["steps"], "--strength", rec["strength"], "--scale", rec["scale"],
              "--scheduler", rec["scheduler"], "--eta", rec["eta"], *ONE, "--outdir", alone)
    assert r.code == 0, r.err
    assert manifest(alone)[0]["input_image_sha256"] == rec["input_image_sha256"]
    diff = np.abs(pixels(batch / rec["path"]) - pixels(alone / "samples/00000.png")).max()
    print(f"max pixel difference img2img batch vs alone: {diff}")
    assert diff <= 1


# --- strength ------------------------------------------------------------------------------------------

def test_strength_sets_denoising_steps_and_changes_the_image(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 64, 64)
    found = {}
    for strength, expected in ((0.5, 2), (0.75, 3), (1.0, 4)):
        out = tmp_path / f"s{strength}"
        r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, *DDIM, "--steps", 4, "--strength",
                  strength, *ONE, "--outdir", out, "--skip-grid", "--no-safety-checker")
        assert r.code == 0, r.err
        rec = manifest(out)[0]
        assert rec["strength"] == strength and rec["denoising_steps"] == expected == int(4 * strength)
        assert params(out / rec["path"])["Denoising strength"] == str(strength)
        found[strength] = pixels(out / rec["path"])
    assert not np.array_equal(found[0.5], found[0.75])
    assert not np.array_equal(found[0.75], found[1.0])
    assert not np.array_equal(found[0.5], found[1.0])


@pytest.fixture(scope="module")
def existing_outdir(tiny, tmp_path_factory):
    """An outdir that already holds an img2img run's outputs (module-wide: one model run)."""
    from sdcli.cli import main

    root = tmp_path_factory.mktemp("existing")
    image = noise(root / "seed-image.png", 64, 64)
    out = root / "out"
    assert main(["img2img", "--model", str(tiny("img2img")), "--image", str(image), "--scheduler", "ddim",
                 "--steps", "2", "--n_samples", "1", "--n_iter", "1", "--outdir", str(out)]) == 0
    assert (out / "samples" / "00000.png").is_file()
    return out


STRENGTH_ERRORS = [
    # (task, steps, strength, words the error line must contain)
    ("img2img", 4, "0", ["--strength 0", "steps"]),
    ("img2img", 4, "0.2", ["--strength 0.2", "--steps 4"]),
    ("inpaint", 2, "0.4", ["--strength 0.4", "--steps 2"]),
    ("depth2img", 4, "0.0", ["--strength 0"]),
    ("img2img", 4, "1.5", ["--strength 1.5", "between 0 and 1"]),
    ("depth2img", 4, "-0.1", ["--strength -0.1", "between 0 and 1"]),
    ("inpaint", 4, "1.01", ["--strength 1.01"]),
]


@pytest.mark.parametrize("task,steps,strength,words", STRENGTH_ERRORS,
                         ids=[f"{c[0]}-steps{c[1]}-strength{c[2]}" for c in STRENGTH_ERRORS])
def test_bad_strength_is_a_usage_error_before_loading(sdcli, tiny, tmp_path, existing_outdir, task, steps,
                                                      strength, words):
    args = task_inputs(task, tmp_path, 64, 64)
    before = snapshot(existing_outdir)
    r = sdcli(task, "--model", tiny(task), *args, *DDIM, "--steps", steps, "--strength", strength, *ONE,
              "--outdir", existing_outdir)
    assert r.one_error(2, *words)
    assert r.loads == 0  # checked before the model loads
    assert snapshot(existing_outdir) == before


# --- sizes ---------------------------------------------------------------------------------------------

def test_output_size_follows_the_input(sdcli, tiny, tmp_path):
    """Default: input size rounded down to a multiple of 8; --W/--H override; one of them keeps the aspect."""
    image = noise(tmp_path / "in.png", 100, 70)
    cases = [([], (96, 64)), (["--W", 64, "--H", 48], (64, 48)), (["--W", 64], (64, 40)), (["--H", 48], (64, 48))]
    for i, (extra, expected) in enumerate(cases):
        out = tmp_path / f"o{i}"
        r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, *DDIM, "--steps", 2, "--strength", 0.5,
                  *ONE, *extra, "--outdir", out, "--skip-grid", "--no-safety-checker")
        assert r.code == 0, r.err
        rec = manifest(out)[0]
        assert size(out / rec["path"]) == expected, extra
        assert (rec["width"], rec["height"]) == expected
        assert params(out / rec["path"])["Size"] == f"{expected[0]}x{expected[1]}"
    # the same rules for the other tasks, checked without loading a model
    for task in ("inpaint", "depth2img", "instruct-edit"):
        args = task_inputs(task, tmp_path / task, 100, 70)
        assert dry_sizes(sdcli, task, "--model", tiny(task), *args, "--steps", 2, *ONE,
                         "--outdir", tmp_path / "dry") == [(96, 64)]
        assert dry_sizes(sdcli, task, "--model", tiny(task), *args, "--steps", 2, *ONE, "--W", 48,
                         "--outdir", tmp_path / "dry") == [(48, 32)]


def test_resize_mode_crop_and_resize(sdcli, tiny, tmp_path):
    """crop and resize give different pixels when the aspect changes, the same when no fitting is needed."""
    wide = noise(tmp_path / "wide.png", 100, 70)
    exact = noise(tmp_path / "exact.png", 64, 64, seed=1)
    got = {}
    for image, extra in ((wide, ["--W", 64, "--H", 64]), (exact, [])):
        for mode in ("crop", "resize"):
            out = tmp_path / f"{image.stem}-{mode}"
            r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, *DDIM, "--steps", 2, "--strength",
                      0.5, *ONE, *extra, "--resize-mode", mode, "--outdir", out, "--skip-grid",
                      "--no-safety-checker")
            assert r.code == 0, r.err
            rec = manifest(out)[0]
            assert rec["resize_mode"] == mode and (rec["width"], rec["height"]) == (64, 64)
            got[image.stem, mode] = pixels(out / rec["path"])
    assert not np.array_equal(got["wide", "crop"], got["wide", "resize"])
    assert np.array_equal(got["exact", "crop"], got["exact", "resize"])
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", wide, "--resize-mode", "stretch",
              "--outdir", tmp_path / "o")
    assert r.one_error(2, "--resize-mode stretch")


def edit_cli_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """InstructPix2Pix edit_cli.py's size rule, as written there."""
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
    return int((width * factor) // 64) * 64, int((height * factor) // 64) * 64


@pytest.mark.parametrize("w,h,resolution", [(100, 70, 64), (100, 70, 128), (70, 100, 128), (640, 480, 512),
                                            (300, 200, 256), (512, 512, 256), (200, 300, 512)])
def test_instruct_edit_resolution_follows_edit_cli(sdcli, tiny, tmp_path, w, h, resolution):
    expected = edit_cli_size(w, h, resolution)
    assert min(expected) >= 64 and expected[0] % 64 == 0 and expected[1] % 64 == 0
    image = noise(tmp_path / "in.png", w, h)
    assert dry_sizes(sdcli, "instruct-edit", "--model", tiny("instruct-edit"), "--image", image, "-p", "edit",
                     "--resolution", resolution, *ONE, "--outdir", tmp_path / "o") == [expected]


# --- inpaint -------------------------------------------------------------------------------------------

def test_inpaint_mask_modes_and_content(sdcli, tiny, tmp_path):
    """A mask in RGB, RGBA, 1 or L with the same content gives the same image; black vs white masks differ."""
    image = noise(tmp_path / "in.png", 64, 64)
    got = {}
    masks = {mode: mask_image(tmp_path / f"mask-{mode}.png", 64, 64, mode) for mode in ("RGB", "RGBA", "1", "L")}
    masks["black"] = mask_image(tmp_path / "black.png", 64, 64, "L", "black")
    masks["white"] = mask_image(tmp_path / "white.png", 64, 64, "L", "white")
    for name, mask in masks.items():
        out = tmp_path / f"o-{name}"
        r = sdcli("inpaint", "--model", tiny("inpaint"), "--image", image, "--mask", mask, *DDIM, "--steps", 2,
                  *ONE, "--outdir", out, "--skip-grid", "--no-safety-checker")
        assert r.code == 0, f"{name}: {r.err}"
        rec = manifest(out)[0]
        assert rec["mask"] == mask.name and rec["mask_sha256"] == sha(mask)
        got[name] = pixels(out / rec["path"])
    for mode in ("RGB", "RGBA", "1"):
        assert np.array_equal(got[mode], got["L"]), mode
    assert not np.array_equal(got["black"], got["white"])
    assert not np.array_equal(got["L"], got["white"])


def test_inpaint_mask_errors(sdcli, tiny, tmp_path, existing_outdir):
    image = noise(tmp_path / "in.png", 64, 64)
    small = mask_image(tmp_path / "small_mask.png", 64, 48)
    before = snapshot(existing_outdir)
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--image", image, "--mask", small, "--outdir", existing_outdir)
    assert r.one_error(2, "--mask", "small_mask.png", "64x48", "64x64")
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--image", image, "--outdir", existing_outdir)
    assert r.one_error(2, "--mask")
    (tmp_path / "a-folder").mkdir()
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--image", image, "--mask", tmp_path / "a-folder",
              "--outdir", existing_outdir)
    assert r.one_error(2, "--mask", "a-folder")
    assert r.loads == 0  # checked before the model loads
    assert snapshot(existing_outdir) == before


def test_inpaint_indir_pairs(sdcli, tiny, tmp_path, existing_outdir):
    folder = tmp_path / "pairs"
    a, b = noise(folder / "a.png", 64, 64, 1), noise(folder / "b.png", 64, 64, 2)
    am, bm = mask_image(folder / "a_mask.png", 64, 64), mask_image(folder / "b_mask.png", 64, 64, fill="white")
    out = tmp_path / "out"
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--indir", folder, *DDIM, "--steps", 2, *ONE,
              "--outdir", out, "--no-safety-checker")
    assert r.code == 0, r.err
    recs = manifest(out)
    assert [(x["input_image"], x["mask"]) for x in recs] == [(a.name, am.name), (b.name, bm.name)]
    assert [x["input_image_sha256"] for x in recs] == [sha(a), sha(b)]
    assert [x["mask_sha256"] for x in recs] == [sha(am), sha(bm)]
    assert [x["batch_size"] for x in recs] == [1, 1]

    noise(folder / "c.png", 64, 64)  # an image without a mask is not a pair: ignored
    mask_image(folder / "d_mask.png", 64, 64)  # a mask without its image is an error
    before = snapshot(existing_outdir)
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--indir", folder, "--outdir", existing_outdir)
    assert r.one_error(2, "--indir", "d_mask.png", "d.png")
    assert snapshot(existing_outdir) == before


# --- depth2img -----------------------------------------------------------------------------------------

@pytest.fixture
def estimator_calls(monkeypatch):
    """Counts the depth estimator's forward passes."""
    import transformers

    calls = []
    original = transformers.DPTForDepthEstimation.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.DPTForDepthEstimation, "forward", counting)
    return calls


def test_depth2img_given_depth_map_is_used_and_saved(sdcli, tiny, tmp_path, estimator_calls):
    image = noise(tmp_path / "in.png", 96, 64)
    depth = gradient(tmp_path / "depth.png", 96, 64)
    out = tmp_path / "out"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--depth-map", depth, "--save-depth",
              *DDIM, "--steps", 2, "--strength", 1.0, "--n_samples", 2, "--n_iter", 1, "--outdir", out)
    assert r.code == 0, r.err
    assert estimator_calls == []  # the estimator was skipped
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert names == ["00000-depth.png", "00000.png", "00001-depth.png", "00001.png"]
    recs = manifest(out)
    assert len(recs) == 2
    for rec in recs:
        assert rec["depth_map"] == depth.name and rec["depth_map_sha256"] == sha(depth)
        saved = out / rec["path"].replace(".png", "-depth.png")
        assert size(saved) == size(out / rec["path"]) == (96, 64)
        with Image.open(saved) as im, Image.open(depth) as given:
            assert np.array_equal(np.asarray(im.convert("L")), np.asarray(given))

    # another depth map gives another image
    flipped = tmp_path / "flipped.png"
    with Image.open(depth) as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    out2 = tmp_path / "out2"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--depth-map", flipped, *DDIM,
              "--steps", 2, "--strength", 1.0, "--n_samples", 2, "--n_iter", 1, "--outdir", out2)
    assert r.code == 0, r.err
    assert not np.array_equal(pixels(out / "samples/00000.png"), pixels(out2 / "samples/00000.png"))
    assert not list((out2 / "samples").glob("*-depth.png"))  # no --save-depth, no depth files


def test_depth2img_estimated_depth_saved(sdcli, tiny, tmp_path, estimator_calls):
    image = noise(tmp_path / "in.png", 100, 70)
    out = tmp_path / "out"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--save-depth", *DDIM, "--steps", 2,
              *ONE, "--outdir", out)
    assert r.code == 0, r.err
    assert len(estimator_calls) >= 1
    rec = manifest(out)[0]
    assert "depth_map" not in rec and "depth_map_sha256" not in rec
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000-depth.png", "00000.png"]
    with Image.open(out / "samples/00000-depth.png") as im:
        assert im.mode == "L" and im.size == (96, 64)
        assert len(np.unique(np.asarray(im))) > 1  # a real estimate, not a constant
    assert rec["denoising_steps"] == int(2 * 0.8)


def test_depth2img_manifest_names_the_saved_depth_file(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 64, 64)
    out = tmp_path / "out"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--save-depth", *DDIM, "--steps", 2,
              "--n_samples", 2, "--n_iter", 1, "--outdir", out, "--skip-grid", "--no-safety-checker")
    assert r.code == 0, r.err
    recs = manifest(out)
    assert [x.get("depth_path") for x in recs] == ["samples/00000-depth.png", "samples/00001-depth.png"]
    assert all((out / x["depth_path"]).is_file() for x in recs)


@pytest.mark.parametrize("mode,value", [("L", 128), ("L", 0), ("I;16", 40000)])
def test_depth2img_flat_depth_map_is_refused(sdcli, tiny, tmp_path, mode, value):
    """A depth map with one value everywhere has no depth (and would give NaN latents): refused before loading."""
    image = noise(tmp_path / "in.png", 64, 64)
    flat = tmp_path / "flat.png"
    Image.new(mode, (64, 64), value).save(flat)
    out = tmp_path / "out"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--depth-map", flat, *DDIM,
              "--steps", 2, *ONE, "--outdir", out, "--no-safety-checker")
    assert r.one_error(2, "--depth-map", "flat.png", "one value everywhere")
    assert r.loads == 0 and not (out / "manifest.jsonl").exists()


def test_depth2img_16bit_depth_map_keeps_its_depth(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 64, 64)
    depth16 = tmp_path / "depth16.png"
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(depth16)
    with Image.open(depth16) as im:
        assert im.mode == "I;16"
    out = tmp_path / "out"
    r = sdcli("depth2img", "--model", tiny("depth2img"), "--image", image, "--depth-map", depth16, "--save-depth",
              *DDIM, "--steps", 2, *ONE, "--outdir", out, "--no-safety-checker")
    assert r.code == 0, r.err
    saved = np.asarray(Image.open(out / "samples/00000-depth.png").convert("L"))
    assert (saved == 255).mean() < 0.05, f"{(saved == 255).mean():.1%} of the depth map saturated"
    assert len(np.unique(saved)) > 100


# --- instruct-edit -------------------------------------------------------------------------------------

EDIT_CLI = ["--edit", "turn it into a cyborg", "--cfg-text", 7, "--cfg-image", 1.2, "--resolution", 64,
            "--steps", 2, "--seed", 42]  # without --seed the seed is random, as edit_cli.py's


def test_instruct_edit_exact_edit_cli_invocation(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 100, 70)
    y = tmp_path / "edited" / "y.png"
    y.parent.mkdir()
    r = sdcli("instruct-edit", "--model", "tiny", "--input", image, "--output", y, *EDIT_CLI)
    assert r.code == 0, r.err
    assert y.is_file()


def test_instruct_edit_edit_cli_spellings(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 100, 70)
    y = tmp_path / "edited" / "y.png"
    y.parent.mkdir()
    r = sdcli("instruct-edit", "--model", "tiny", "--input", image, "--output", y, *EDIT_CLI, *ONE, *DDIM, "--manifest")
    assert r.code == 0, r.err
    assert y.is_file() and size(y) == (64, 64) == edit_cli_size(100, 70, 64)
    assert not (y.parent / "samples").exists() and not list(y.parent.glob("grid-*"))
    p = params(y)
    assert p["prompt"] == "turn it into a cyborg"
    assert p["Image CFG scale"] == "1.2" and p["CFG scale"] == "7.0" and p["Steps"] == "2"
    assert p["Size"] == "64x64" and "Seed" in p and p["Sampler"] == "DDIM"
    recs = manifest(y.parent)
    assert len(recs) == 1 and recs[0]["path"] == "y.png" and recs[0]["sha256"] == sha(y)
    assert recs[0]["image_guidance_scale"] == 1.2 and recs[0]["scale"] == 7.0 and recs[0]["model"] == "tiny"
    assert recs[0]["input_image"] == image.name and recs[0]["input_image_sha256"] == sha(image)

    # the same settings again to a .jpg: metadata still readable by `sdcli info`; an explicit name replaces
    jpg = tmp_path / "edited" / "y.jpg"
    for _ in range(2):
        r = sdcli("instruct-edit", "--model", "tiny", "--input", image, "--output", jpg, *EDIT_CLI, *ONE, *DDIM,
                  "--manifest")
        assert r.code == 0, r.err
    with Image.open(jpg) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    r = sdcli("info", jpg)
    assert r.code == 0, r.err
    assert "Image CFG scale: 1.2" in r.out and "CFG scale: 7.0" in r.out and "turn it into a cyborg" in r.out
    record = json.loads(r.out[r.out.index("{"):])
    assert record["image_guidance_scale"] == 1.2 and record["task"] == "instruct-edit"
    assert [x["path"] for x in manifest(y.parent)] == ["y.png", "y.jpg", "y.jpg"]
    # same seed, same pixels (PNG vs PNG)
    y2 = tmp_path / "edited" / "y2.png"
    assert sdcli("instruct-edit", "--model", "tiny", "--input", image, "--output", y2, *EDIT_CLI, *ONE,
                 *DDIM).code == 0
    assert np.array_equal(pixels(y), pixels(y2))


def test_instruct_edit_image_guidance_scale_changes_the_image(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png", 64, 64)
    got = []
    for igs in (1.0, 3.0):
        out = tmp_path / f"o{igs}"
        r = sdcli("instruct-edit", "--model", tiny("instruct-edit"), "--image", image, "-p", "make it snowy",
                  "--image-guidance-scale", igs, *DDIM, "--steps", 2, *ONE, "--outdir", out, "--skip-grid",
                  "--no-safety-checker")
        assert r.code == 0, r.err
        assert manifest(out)[0]["image_guidance_scale"] == igs
        got.append(pixels(out / "samples/00000.png"))
    assert not np.array_equal(*got)


def test_instruct_edit_errors(sdcli, tiny, tmp_path, existing_outdir):
    image = noise(tmp_path / "in.png", 64, 64)
    model = ["--model", tiny("instruct-edit")]
    before = snapshot(existing_outdir)
    r = sdcli("instruct-edit", *model, "--input", image, "--edit", "x", "--output", tmp_path / "y.png",
              "--n_samples", 2, "--n_iter", 1)
    assert r.one_error(2, "--output", "y.png", "2")
    r = sdcli("instruct-edit", *model, "--input", image, "--edit", "x", "--output", tmp_path / "y.gif", *ONE)
    assert r.one_error(2, "--output", "y.gif")
    r = sdcli("instruct-edit", *model, "--image", image, "-p", "x", "--image-guidance-scale", 0.5,
              "--outdir", existing_outdir)
    assert r.one_error(2, "--image-guidance-scale 0.5")
    r = sdcli("instruct-edit", *model, "--image", image, "--outdir", existing_outdir)
    assert r.one_error(2, "--prompt")
    r = sdcli("instruct-edit", *model, "--image", image, "-p", "x", "--resolution", 32, "--outdir", existing_outdir)
    assert r.one_error(2, "--resolution 32")
    assert not (tmp_path / "y.png").exists() and not (tmp_path / "y.gif").exists()
    assert snapshot(existing_outdir) == before


# --- many inputs ---------------------------------------------------------------------------------------

def test_image_folder_and_glob_give_one_batch_per_image(sdcli, tiny, tmp_path):
    folder = tmp_path / "inputs"
    a, b = noise(folder / "a.png", 64, 64, 1), noise(folder / "b.png", 64, 64, 2)
    (folder / "notes.txt").write_text("not an image")
    runs = {}
    for name, spec in (("folder", folder), ("glob", f"{folder}/*.png")):
        out = tmp_path / name
        r = sdcli("img2img", "--model", tiny("img2img"), "--image", spec, *DDIM, "--steps", 2, "--strength", 0.5,
                  "--n_samples", 2, "--n_iter", 1, "--seed", 3, "--outdir", out, "--no-safety-checker")
        assert r.code == 0, r.err
        recs = manifest(out)
        assert [x["input_image"] for x in recs] == [a.name, a.name, b.name, b.name]
        assert [x["input_image_sha256"] for x in recs] == [sha(a), sha(a), sha(b), sha(b)]
        assert [x["batch_size"] for x in recs] == [2, 2, 2, 2]
        assert [x["seed"] for x in recs] == [3, 4, 5, 6]
        with Image.open(out / "grid-0000.png") as grid:
            assert grid.size == (2 * 66 + 2, 2 * 66 + 2)  # 4 images, 2 per row
        runs[name] = out
    for n in range(4):
        assert np.array_equal(pixels(runs["folder"] / f"samples/{n:05d}.png"),
                              pixels(runs["glob"] / f"samples/{n:05d}.png"))
    assert not np.array_equal(pixels(runs["folder"] / "samples/00000.png"),
                              pixels(runs["folder"] / "samples/00002.png"))


def test_jsonl_rows_with_their_own_images(sdcli, tiny, tmp_path, monkeypatch):
    """Row images are resolved against the prompt file's folder (not the working directory); a row without
    an image uses --image; per-row strength and steps apply to that row only."""
    jobdir = tmp_path / "job"
    a = noise(jobdir / "imgs" / "a.png", 64, 64, 1)
    b = noise(jobdir / "imgs" / "b.png", 96, 64, 2)
    c = noise(tmp_path / "cli.png", 64, 64, 3)
    rows = jobdir / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "first", "image": "imgs/a.png", "strength": 0.5},
        {"prompt": "second", "init_image": "imgs/b.png", "strength": 1.0, "steps": 2},
        {"prompt": "third"},
    ]) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "out"
    r = sdcli("img2img", "--model", tiny("img2img"), "--from-file", rows, "--image", c, *DDIM, "--steps", 4,
              "--strength", 0.75, "--n_samples", 2, "--n_iter", 1, "--outdir", out, "--no-safety-checker")
    assert r.code == 0, r.err
    recs = manifest(out)
    got = [(x["prompt"], x["input_image"], x["input_image_sha256"], x["strength"], x["steps"], x["denoising_steps"],
            x["width"]) for x in recs]
    assert got == [("first", a.name, sha(a), 0.5, 4, 2, 64), ("second", b.name, sha(b), 1.0, 2, 2, 96),
                   ("third", c.name, sha(c), 0.75, 4, 3, 64)]
    assert [x["batch_size"] for x in recs] == [1, 1, 1]  # different inputs never share a batch
    assert "different sizes" in r.err


def test_jsonl_inpaint_rows_with_masks(sdcli, tiny, tmp_path):
    jobdir = tmp_path / "job"
    a, b = noise(jobdir / "a.png", 64, 64, 1), noise(jobdir / "b.png", 64, 64, 2)
    am = mask_image(jobdir / "a-mask.png", 64, 64)
    bm = mask_image(jobdir / "b-mask.png", 64, 64, fill="white")
    cli_mask = mask_image(tmp_path / "cli-mask.png", 64, 64, fill="black")
    rows = jobdir / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "one", "image": "a.png", "mask": "a-mask.png", "strength": 0.5},
        {"prompt": "two", "image": "b.png", "mask_image": str(bm)},
        {"prompt": "three", "image": "b.png"},  # takes --mask
    ]) + "\n")
    out = tmp_path / "out"
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--from-file", rows, "--mask", cli_mask, *DDIM, "--steps", 4,
              "--n_samples", 1, "--n_iter", 1, "--outdir", out, "--no-safety-checker")
    assert r.code == 0, r.err
    recs = manifest(out)
    assert [(x["input_image"], x["mask"], x["mask_sha256"], x["strength"], x["denoising_steps"]) for x in recs] == [
        (a.name, am.name, sha(am), 0.5, 2), (b.name, bm.name, sha(bm), 1.0, 4),
        (b.name, cli_mask.name, sha(cli_mask), 1.0, 4)]
    assert not np.array_equal(pixels(out / recs[1]["path"]), pixels(out / recs[2]["path"]))


@pytest.mark.parametrize("task,row", [
    ("img2img", {"prompt": "a", "image": "in.png", "strength": "strong"}),
    ("instruct-edit", {"prompt": "a", "image": "in.png", "image_guidance_scale": "high"}),
])
def test_row_non_numeric_task_values_are_usage_errors(sdcli, tiny, tmp_path, task, row):
    noise(tmp_path / "in.png", 64, 64)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(row) + "\n")
    r = sdcli(task, "--model", tiny(task), "--from-file", rows, "--outdir", tmp_path / "o")
    key = "strength" if "strength" in row else "image_guidance_scale"
    assert r.one_error(2, "rows.jsonl:1", key)


def test_row_image_with_home_folder(sdcli, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    noise(tmp_path / "in.png", 64, 64)
    rows = tmp_path / "job" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text(json.dumps({"prompt": "a", "image": "~/in.png"}) + "\n")
    assert dry_sizes(sdcli, "img2img", "--model", tiny("img2img"), "--from-file", rows, *ONE, "--outdir",
                     tmp_path / "o") == [(64, 64)]


def test_exif_rotated_input_keeps_its_orientation(sdcli, tiny, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 100x70, shown 70x100
    photo = tmp_path / "phone.jpg"
    Image.open(noise(tmp_path / "raw.png", 100, 70)).save(photo, exif=exif, quality=95)
    assert dry_sizes(sdcli, "img2img", "--model", tiny("img2img"), "--image", photo, *ONE,
                     "--outdir", tmp_path / "o") == [(64, 96)]
