"""Faithful to the original scripts (issue 9): every argparse flag of CompVis/Stability-AI txt2img.py and
img2img.py, CompVis inpaint.py and InstructPix2Pix edit_cli.py is accepted (mapped, or refused with a
reason); per-task defaults follow the script each subcommand mirrors; --eta is recorded only where the
scheduler uses it; inpaint pastes the unmasked pixels back. Tiny models, 64 px, 2 steps."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, manifest, pixels
from PIL import Image

from sdcli.records import parse_a1111

# The argparse flags of the original scripts, read from their sources (`parser.add_argument(...)`):
#   CompVis/stable-diffusion            scripts/txt2img.py, scripts/img2img.py, scripts/inpaint.py
#   Stability-AI/stablediffusion        scripts/txt2img.py, scripts/img2img.py
#   timothybrooks/instruct-pix2pix      edit_cli.py
ORIGINAL_FLAGS = {
    ("CompVis scripts/txt2img.py", "txt2img"): [
        "--prompt", "--outdir", "--skip_grid", "--skip_save", "--ddim_steps", "--plms", "--dpm_solver", "--laion400m",
        "--fixed_code", "--ddim_eta", "--n_iter", "--H", "--W", "--C", "--f", "--n_samples", "--n_rows", "--scale",
        "--from-file", "--config", "--ckpt", "--seed", "--precision"],
    ("CompVis scripts/img2img.py", "img2img"): [
        "--prompt", "--init-img", "--outdir", "--skip_grid", "--skip_save", "--ddim_steps", "--plms", "--fixed_code",
        "--ddim_eta", "--n_iter", "--C", "--f", "--n_samples", "--n_rows", "--scale", "--strength", "--from-file",
        "--config", "--ckpt", "--seed", "--precision"],
    ("CompVis scripts/inpaint.py", "inpaint"): ["--indir", "--outdir", "--steps"],
    ("Stability-AI scripts/txt2img.py", "txt2img"): [
        "--prompt", "--outdir", "--steps", "--plms", "--dpm", "--fixed_code", "--ddim_eta", "--n_iter", "--H", "--W",
        "--C", "--f", "--n_samples", "--n_rows", "--scale", "--from-file", "--config", "--ckpt", "--seed",
        "--precision", "--repeat", "--device", "--torchscript", "--ipex", "--bf16"],
    ("Stability-AI scripts/img2img.py", "img2img"): [
        "--prompt", "--init-img", "--outdir", "--ddim_steps", "--fixed_code", "--ddim_eta", "--n_iter", "--C", "--f",
        "--n_samples", "--n_rows", "--scale", "--strength", "--from-file", "--config", "--ckpt", "--seed",
        "--precision"],
    ("edit_cli.py", "instruct-edit"): [
        "--resolution", "--steps", "--config", "--ckpt", "--vae-ckpt", "--input", "--output", "--edit", "--cfg-text",
        "--cfg-image", "--seed"],
}
SWITCHES = {"--skip_grid", "--skip_save", "--plms", "--dpm_solver", "--laion400m", "--fixed_code", "--dpm",
            "--torchscript", "--ipex", "--bf16"}  # action='store_true' in the sources
REFUSED = {"--laion400m": "LAION-400M", "--torchscript": "--compile", "--ipex": "--precision bf16"}
CASES = [(script, task, flag) for (script, task), flags in ORIGINAL_FLAGS.items() for flag in flags]


def noise(path: Path, w: int = 64, h: int = 64, seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def box_mask(path: Path, w: int = 64, h: int = 64, lo: int = 24, hi: int = 40) -> Path:
    a = np.zeros((h, w), np.uint8)
    a[lo:hi, lo:hi] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "L").save(path)
    return path


# --- every original flag ---------------------------------------------------------------------------------

def test_every_original_flag_is_an_option_of_its_subcommand():
    import typer.main

    from sdcli.cli import app

    commands = typer.main.get_command(app).commands
    for (script, task), flags in ORIGINAL_FLAGS.items():
        spellings = {s for p in commands[task].params for s in (*p.opts, *p.secondary_opts)}
        missing = [f for f in flags if f not in spellings]
        assert not missing, f"{script}: sdcli {task} lacks {missing}"


@pytest.mark.parametrize("script,task,flag", CASES, ids=[f"{c[1]}-{c[0].split()[0]}-{c[2]}" for c in CASES])
def test_original_flag_runs_or_is_refused_with_a_reason(sdcli, tiny, tmp_path, script, task, flag):
    """The flag in the original's form, with a value of the original's type: the dry run plans (exit 0), or
    a refused flag ends in one line naming it and what to use instead (exit 2). Never "No such option"."""
    image, ldm_yaml = noise(tmp_path / "in.png"), tmp_path / "v1-inference.yaml"
    ldm_yaml.write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params: {}\n")
    pairs = tmp_path / "pairs"
    noise(pairs / "a.png"), box_mask(pairs / "a_mask.png")
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    model = tiny(task)
    values = {"--prompt": "a cat", "--init-img": image, "--outdir": tmp_path / "out", "--ddim_steps": 4, "--steps": 4,
              "--ddim_eta": 0.0, "--n_iter": 1, "--H": 64, "--W": 64, "--C": 4, "--f": 8, "--n_samples": 1,
              "--n_rows": 0, "--scale": 5.0, "--strength": 0.5, "--from-file": tmp_path / "prompts.txt",
              "--config": ldm_yaml, "--ckpt": model, "--seed": 1, "--precision": "autocast", "--repeat": 1,
              "--device": "cpu", "--indir": pairs, "--resolution": 64, "--vae-ckpt": Path(model) / "vae",
              "--input": image, "--output": tmp_path / "edited.png", "--edit": "make it snowy", "--cfg-text": 7.5,
              "--cfg-image": 1.5}
    base = {"txt2img": [], "img2img": ["--init-img", image], "inpaint": ["--indir", pairs],
            "instruct-edit": ["--input", image, "--edit", "make it snowy"]}[task]
    given = [flag] if flag in SWITCHES else [flag, values[flag]]
    r = sdcli(task, "--model", model, *base, "--no-safety-checker", "--outdir", tmp_path / "out", *given, "--dry-run")
    assert "No such option" not in r.err
    if flag in REFUSED:
        assert r.one_error(2, flag, REFUSED[flag])
    else:
        assert r.code == 0, r.err
        assert r.loads == 0


# --- what the mapped flags mean ----------------------------------------------------------------------------

def dry_jobs(r) -> list[dict]:
    assert r.code == 0, r.err
    return [json.loads(line) for line in r.out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("flag,scheduler", [("--dpm_solver", "dpm++2m"), ("--dpm-solver", "dpm++2m"),
                                            ("--dpm", "dpm++2m"), ("--plms", "pndm")])
def test_sampler_switches_choose_their_scheduler(sdcli, tiny, flag, scheduler):
    r = sdcli("txt2img", "--model", tiny(), flag, "--n_samples", 1, "--n_iter", 1, "--dry-run")
    assert [j["scheduler"] for j in dry_jobs(r)] == [scheduler]


@pytest.mark.parametrize("args,words", [
    (["--bf16", "--precision", "full"], ["--bf16", "--precision full"]),
    (["--plms", "--scheduler", "euler"], ["--plms", "--scheduler euler"]),
    (["--plms", "--dpm_solver"], ["--dpm_solver", "--plms"]),
])
def test_contradicting_flags_are_one_usage_error(sdcli, tiny, args, words):
    assert sdcli("txt2img", "--model", tiny(), *args, "--dry-run").one_error(2, *words)


def test_bf16_runs_in_bfloat16_and_autocast_goes_with_it(sdcli, tiny, tmp_path):
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 1, "--bf16", "--precision",
              "autocast", "--no-safety-checker", "--outdir", tmp_path)
    assert r.code == 0, r.err
    assert manifest(tmp_path)[0]["precision"] == "bfloat16"


def test_C_and_f_are_checked_against_the_loaded_model(sdcli, tiny, tmp_path):
    """The tiny VAE has 4 latent channels and 4 blocks (downsampling factor 8), as SD's."""
    common = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 1, "--no-safety-checker"]
    assert sdcli(*common, "--C", 4, "--f", 8, "--outdir", tmp_path / "ok").code == 0
    assert sdcli(*common, "--C", 8, "--outdir", tmp_path / "c").one_error(2, "--C 8", "4 latent channels")
    assert sdcli(*common, "--f", 16, "--outdir", tmp_path / "f").one_error(2, "--f 16", "downsamples by 8")
    assert not list((tmp_path / "c").glob("samples/*.png")) and not list((tmp_path / "f").glob("samples/*.png"))
    assert sdcli(*common, "--C", 0, "--dry-run").one_error(2, "--C 0")


def _changed_vae(tiny, folder: Path) -> Path:
    """The tiny model's VAE with a decoder that draws differently (its output conv scaled)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(tiny()) / "vae")
    vae.decoder.conv_out.weight.data *= -0.5
    vae.save_pretrained(folder)
    return folder


def _as_single_file(vae_folder: Path, out: Path) -> Path:
    """A VAE folder as one .safetensors with the original (LDM) key names, as VAE downloads are."""
    import ldm_export
    from safetensors.torch import save_file

    config = ldm_export._config(vae_folder)
    state = {}
    for key, tensor in ldm_export._load_component(vae_folder).items():
        ldm_key = ldm_export._vae_key(key, config)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        state[ldm_key] = tensor.contiguous()
    save_file(state, str(out))
    return out


def test_vae_ckpt_folder_and_single_file_replace_the_models_vae(sdcli, tiny, tmp_path):
    folder = _changed_vae(tiny, tmp_path / "my-vae")
    single = _as_single_file(folder, tmp_path / "my-vae.safetensors")
    common = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 1, "--no-safety-checker"]
    runs = {"own": [], "folder": ["--vae-ckpt", folder], "file": ["--vae", single]}
    for name, args in runs.items():
        r = sdcli(*common, *args, "--outdir", tmp_path / name)
        assert r.code == 0, r.err
    own, by_folder, by_file = (pixels(tmp_path / n / "samples/00000.png") for n in runs)
    assert np.abs(own - by_folder).max() > 10  # the other decoder drew it
    assert np.array_equal(by_folder, by_file)  # the same VAE, loaded from either form


def test_vae_ckpt_problems_are_found_before_loading(sdcli, tiny, tmp_path):
    pickle = tmp_path / "vae.ckpt"
    pickle.write_bytes(b"not really")
    r = sdcli("txt2img", "--model", tiny(), "--vae-ckpt", pickle, "--dry-run")
    assert r.one_error(2, "--vae-ckpt", "--allow-unsafe-pickle") and r.loads == 0
    r = sdcli("txt2img", "--model", tiny(), "--vae", tmp_path / "missing", "--dry-run")
    assert r.one_error(3, "--vae", "missing") and r.loads == 0
    (tmp_path / "empty").mkdir()
    assert sdcli("txt2img", "--model", tiny(), "--vae", tmp_path / "empty", "--dry-run").one_error(3, "config.json")


# --- per-task defaults ----------------------------------------------------------------------------------

def show(sdcli, *args) -> dict[str, str]:
    r = sdcli("config", "show", *args)
    assert r.code == 0, r.err
    return dict(line.split(": ", 1) for line in r.out.splitlines())


def test_each_subcommand_has_the_defaults_of_the_script_it_mirrors(sdcli):
    want = {
        # CompVis scripts/txt2img.py
        "txt2img": {"n_samples": "3", "n_iter": "2", "scale": "7.5", "steps": "50", "scheduler": '"ddim"', "seed": "42"},
        # CompVis scripts/img2img.py
        "img2img": {"n_samples": "2", "n_iter": "1", "scale": "5.0", "strength": "0.75", "steps": "50", "seed": "42"},
        # edit_cli.py: one image, 100 steps, Euler ancestral, cfg-text 7.5, cfg-image 1.5, a random seed
        "instruct-edit": {"n_samples": "1", "n_iter": "1", "steps": "100", "scheduler": '"euler-a"', "scale": "7.5",
                          "image_guidance_scale": "1.5", "seed": "null"},
        "inpaint": {"strength": "1.0", "paste_back": "true", "mask_blur": "4"},
    }
    for task, expected in want.items():
        got = show(sdcli, "--task", task)
        assert {k: got[k] for k in expected} == expected, task


def test_task_defaults_lie_below_configs_set_and_flags(sdcli, tiny, tmp_path):
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("n_samples: 4\nscale: 6.0\n")
    got = show(sdcli, "--task", "img2img", "--config", yaml, "--set", "n_iter=3")
    assert (got["n_samples"], got["scale"], got["n_iter"], got["strength"]) == ("4", "6.0", "3", "0.75")
    image = noise(tmp_path / "in.png")
    jobs = dry_jobs(sdcli("img2img", "--model", tiny("img2img"), "--image", image, "--dry-run"))
    assert [(j["scale"], j["steps"]) for j in jobs] == [(5.0, 50)] * 2  # 2 samples x 1 iteration
    jobs = dry_jobs(sdcli("img2img", "--model", tiny("img2img"), "--image", image, "--n_samples", 1, "--scale", 8,
                          "--dry-run"))
    assert [j["scale"] for j in jobs] == [8.0]


@pytest.mark.parametrize("task,text", [("txt2img", "Batch size [3]"), ("img2img", "Batch size [2]"),
                                       ("img2img", "[5.0]"), ("img2img", "0..1 [0.75]"),
                                       ("instruct-edit", "Denoising steps [100]"), ("instruct-edit", "[random]"),
                                       ("instruct-edit", "[euler-a]"), ("inpaint", "[4]")])
def test_help_shows_each_subcommands_defaults(sdcli, task, text):
    r = sdcli(task, "--help")
    assert r.code == 0 and text in " ".join(r.out.split())


def test_instruct_edit_seed_is_random_printed_and_recorded(sdcli, tiny, tmp_path):
    image = noise(tmp_path / "in.png")
    common = ["instruct-edit", "--model", tiny("instruct-edit"), "--input", image, "--edit", "make it snowy"]
    seeds = [dry_jobs(sdcli(*common, "--dry-run"))[0]["seed"] for _ in range(2)]
    assert seeds[0] != seeds[1]
    r = sdcli(*common, *FAST, "--no-safety-checker", "--outdir", tmp_path / "out")
    assert r.code == 0, r.err
    rec = manifest(tmp_path / "out")[0]
    assert f"seed {rec['seed']} (random" in r.err
    assert (rec["steps"], rec["scale"], rec["image_guidance_scale"]) == (2, 7.5, 1.5)
    assert len(manifest(tmp_path / "out")) == 1  # one image, as edit_cli.py
    assert sdcli(*common, "--resume", "--dry-run").one_error(2, "--resume", "--seed")
    assert dry_jobs(sdcli(*common, "--seed", 5, "--dry-run"))[0]["seed"] == 5


@pytest.mark.parametrize("task", ["img2img", "inpaint", "depth2img", "instruct-edit"])
def test_a_preset_keeps_the_input_images_size(sdcli, tiny, tmp_path, task):
    image = noise(tmp_path / "in.png", 96, 64)
    args = ["--image", image]
    if task == "inpaint":
        args += ["--mask", box_mask(tmp_path / "m.png", 96, 64)]
    common = [task, "--model", tiny(task), *args, "--prompt", "x", "--config", "sd15", "--n_samples", 1,
              "--n_iter", 1, "--dry-run"]
    assert [(j["W"], j["H"]) for j in dry_jobs(sdcli(*common))] == [(96, 64)]
    assert [(j["W"], j["H"]) for j in dry_jobs(sdcli(*common, "--W", 128, "--H", 64))] == [(128, 64)]
    assert [(j["W"], j["H"]) for j in dry_jobs(sdcli(*common, "--set", "W=48"))] == [(48, 32)]


def test_a_preset_still_sizes_txt2img(sdcli, tiny):
    jobs = dry_jobs(sdcli("txt2img", "--model", tiny(), "--config", "sd15", "--n_samples", 1, "--n_iter", 1,
                          "--dry-run"))
    assert [(j["W"], j["H"]) for j in jobs] == [(512, 512)]


# --- eta ------------------------------------------------------------------------------------------------

def test_the_scheduler_tables_eta_column_is_what_diffusers_does():
    import diffusers

    from sdcli import schedulers

    for name, entry in schedulers.TABLE.items():
        step = getattr(diffusers, entry.cls).step
        assert entry.eta == ("eta" in inspect.signature(step).parameters), name


@pytest.mark.parametrize("scheduler,recorded,warned", [("ddim", 0.5, False), ("euler-a", None, True),
                                                       ("model", None, True)])  # tiny's own: PNDM
def test_eta_is_recorded_only_where_the_scheduler_uses_it(sdcli, tiny, tmp_path, scheduler, recorded, warned):
    r = sdcli("txt2img", "--model", tiny(), *FAST[:-2], "--scheduler", scheduler, "--eta", 0.5, "--n_samples", 2,
              "--n_iter", 1, "--no-safety-checker", "--outdir", tmp_path)
    assert r.code == 0, r.err
    assert [rec["eta"] for rec in manifest(tmp_path)] == [recorded, recorded]
    warnings = [line for line in r.err_lines if "warning: --eta" in line]
    assert len(warnings) == (1 if warned else 0), r.err
    params = parse_a1111(Image.open(tmp_path / "samples/00000.png").text["parameters"])
    assert ("Eta" in params or "Eta DDIM" in params) == (recorded is not None)


# --- inpaint: paste-back --------------------------------------------------------------------------------

def _inpaint(sdcli, tiny, tmp_path, name, *args):
    image, mask = noise(tmp_path / "in.png"), box_mask(tmp_path / "mask.png")
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--image", image, "--mask", mask, "--prompt", "x", *FAST,
              "--n_samples", 1, "--n_iter", 1, "--seed", 3, "--no-safety-checker", "--outdir", tmp_path / name, *args)
    assert r.code == 0, r.err
    rec = manifest(tmp_path / name)[0]
    return pixels(tmp_path / name / rec["path"]), rec, pixels(image), np.asarray(Image.open(mask)) > 127


def test_paste_back_keeps_every_pixel_outside_the_blurred_mask(sdcli, tiny, tmp_path):
    out, rec, original, inside = _inpaint(sdcli, tiny, tmp_path, "default")
    off, off_rec, _, _ = _inpaint(sdcli, tiny, tmp_path, "off", "--no-paste-back")
    hard, _, _, _ = _inpaint(sdcli, tiny, tmp_path, "hard", "--mask-blur", 0)
    far = np.ones_like(inside)  # farther than 4 x the blur (4 px) from the mask box [24, 40)
    far[24 - 16:40 + 16, 24 - 16:40 + 16] = False
    assert np.array_equal(out[far], original[far])
    assert np.abs(off[far] - original[far]).max() > 10  # without paste-back the VAE redraws it
    # blur 0: exactly CompVis inpaint.py's (1 - mask) * image + mask * predicted
    assert np.array_equal(hard, np.where(inside[..., None], off, original))
    assert not np.array_equal(out, hard)  # the blur feathers the edge
    assert rec["mask_blur"] == 4 and "mask_blur" not in off_rec
    params = parse_a1111(Image.open(tmp_path / "default" / rec["path"]).text["parameters"])
    assert params["Mask blur"] == "4"


def test_indir_writes_one_image_per_pair_named_after_it(sdcli, tiny, tmp_path):
    """CompVis inpaint.py: OUTDIR/x.png for every x.png + x_mask.png, the unmasked pixels the input's."""
    pairs = tmp_path / "pairs"
    for i, name in enumerate(("a", "b")):
        noise(pairs / f"{name}.png", seed=i), box_mask(pairs / f"{name}_mask.png")
    out = tmp_path / "out"
    r = sdcli("inpaint", "--model", tiny("inpaint"), "--indir", pairs, "--steps", 2, "--scheduler", "ddim",
              "--mask-blur", 0, "--no-safety-checker", "--outdir", out)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "manifest.jsonl"]
    assert [rec["path"] for rec in manifest(out)] == ["a.png", "b.png"]
    inside = np.asarray(Image.open(pairs / "a_mask.png")) > 127
    for name in ("a", "b"):
        assert np.array_equal(pixels(out / f"{name}.png")[~inside], pixels(pairs / f"{name}.png")[~inside])
    again = sdcli("inpaint", "--model", tiny("inpaint"), "--indir", pairs, "--outdir", pairs, "--dry-run")
    assert again.one_error(2, "--outdir", "--indir")
    shutil.rmtree(out)
