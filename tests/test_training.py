"""sdcli train embedding / lora on the demo model: short runs that keep the path alive (the outputs load with
--embedding / --lora and with plain diffusers), checkpoints, validation images, --resume after a kill giving the
same result as a run never stopped, and every bad input refused before a model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import sdcli_command

STAR = {"shape": "star", "color": "orange", "bg": "purple", "size": "large", "pos": "center", "jitter": (0, 0)}


@pytest.fixture
def images(tmp_path):
    from sdcli.demo import world

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate(["large", "medium", "large", "medium"]):
        world.render({**STAR, "size": size, "jitter": (i % 3 - 1, 0)})[0].save(folder / f"{i}.png")
    (folder / "0.txt").write_text("{token} on purple")  # a caption beside its image
    return folder


def emb_args(images, out, *extra):
    return ("train", "embedding", "--model", "demo", "--images", images, "--token", "<my-thing>", "--init-token",
            "circle", "--out", out, "--batch-size", 2, "--template", "{token}", "--validation-steps", 2, *extra)


def lora_args(images, out, *extra):
    return ("train", "lora", "--model", "demo", "--images", images, "--instance-prompt", "sks", "--out", out,
            "--batch-size", 2, "--rank", 2, "--lr", "1e-3", "--validation-steps", 2, *extra)


def tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_embedding_trains_saves_checkpoints_and_loads_everywhere(sdcli, images, tmp_path):
    out = tmp_path / "thing.safetensors"
    r = sdcli(*emb_args(images, out, "--steps", 4, "--checkpoint-every", 2, "--json"))
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["status"] == "ok" and summary["steps"] == 4 and summary["out"] == str(out)
    work = tmp_path / "thing-train"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    assert sorted(p.name for p in (work / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert len((work / "loss.jsonl").read_text().splitlines()) == 4
    vectors = tensors(out)
    assert list(vectors) == ["<my-thing>"] and vectors["<my-thing>"].shape == (1, 64)
    g = sdcli("txt2img", "--model", "demo", "--prompt", "<my-thing>", "--embedding", out, "--n_samples", 1,
              "--n_iter", 1, "--steps", 2, "--outdir", tmp_path / "gen", "--json")
    assert g.code == 0, g.err
    assert json.loads(g.out)["generated"] == 1

    from diffusers import StableDiffusionPipeline

    from sdcli import demo

    pipe = StableDiffusionPipeline.from_pretrained(str(demo.folder("txt2img")), safety_checker=None)
    pipe.load_textual_inversion(str(out))
    assert "<my-thing>" in pipe.tokenizer.get_vocab()


def test_embedding_training_moves_only_the_new_token(sdcli, images, tmp_path):
    """Two vectors, trained: they leave the init token's values; the model itself is not saved or changed."""
    from diffusers import StableDiffusionPipeline

    from sdcli import demo

    out = tmp_path / "thing.safetensors"
    assert sdcli(*emb_args(images, out, "--steps", 3, "--vectors", 2)).code == 0
    vectors = tensors(out)["<my-thing>"]
    pipe = StableDiffusionPipeline.from_pretrained(str(demo.folder("txt2img")), safety_checker=None)
    init = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("circle</w>")]
    assert vectors.shape == (2, 64) and not (vectors == init.detach()).all(dim=1).any()


def test_lora_trains_and_loads_with_lora_and_plain_diffusers(sdcli, images, tmp_path):
    out = tmp_path / "sks.safetensors"
    r = sdcli(*lora_args(images, out, "--steps", 3, "--train-text-encoder", "--json"))
    assert r.code == 0, r.err
    keys = list(tensors(out))
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    for weight in ("1", "0.5"):
        g = sdcli("txt2img", "--model", "demo", "--prompt", "sks", "--lora", f"{out}:{weight}", "--n_samples", 1,
                  "--n_iter", 1, "--steps", 2, "--outdir", tmp_path / f"gen{weight}")
        assert g.code == 0, g.err

    from diffusers import StableDiffusionPipeline

    from sdcli import demo

    pipe = StableDiffusionPipeline.from_pretrained(str(demo.folder("txt2img")), safety_checker=None)
    pipe.load_lora_weights(str(out))
    assert pipe.get_list_adapters()


def test_lora_prior_preservation_makes_class_images_once(sdcli, images, tmp_path):
    out = tmp_path / "sks.safetensors"
    args = lora_args(images, out, "--steps", 2, "--prior-preservation", "--class-prompt", "a star", "--class-images", 2)
    assert sdcli(*args).code == 0
    made = sorted((tmp_path / "sks-train" / "class-images").iterdir())
    assert [p.name for p in made] == ["0000.png", "0001.png"]


def test_resume_gives_the_result_of_a_run_never_stopped(sdcli, images, tmp_path):
    whole, parts = tmp_path / "a" / "t.safetensors", tmp_path / "b" / "t.safetensors"
    whole.parent.mkdir()
    parts.parent.mkdir()
    assert sdcli(*emb_args(images, whole, "--steps", 6, "--checkpoint-every", 3)).code == 0
    assert sdcli(*emb_args(images, parts, "--steps", 3, "--checkpoint-every", 3)).code == 0
    r = sdcli(*emb_args(images, parts, "--steps", 6, "--checkpoint-every", 3, "--resume", "--json"))
    assert r.code == 0, r.err
    assert json.loads(r.out)["resumed_from"] == 3
    assert (tensors(whole)["<my-thing>"] == tensors(parts)["<my-thing>"]).all()


@pytest.mark.slow
def test_a_killed_training_resumes_to_the_same_result(images, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "a" / "t.safetensors", tmp_path / "b" / "t.safetensors"
    whole.parent.mkdir()
    killed.parent.mkdir()
    common = ["--steps", "60", "--checkpoint-every", "10", "--validate-every", "1000"]
    lora = [str(a) for a in lora_args(images, whole, *common)]
    assert subprocess.run(sdcli_command(*lora), env=env, capture_output=True).returncode == 0
    lora_killed = [a if a != str(whole) else str(killed) for a in lora]
    proc = subprocess.Popen(sdcli_command(*lora_killed), env=env, stderr=subprocess.PIPE, text=True)
    work = killed.parent / "t-train"
    t0 = time.monotonic()
    while not (work / "checkpoint-000020").exists():
        assert proc.poll() is None and time.monotonic() - t0 < 180, "ended before the kill point"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()
    r = subprocess.run(sdcli_command(*lora_killed, "--resume", "--json"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] >= 20
    a, b = tensors(whole), tensors(killed)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_bad_inputs_fail_before_any_model_loads(sdcli, images, tmp_path):
    from PIL import Image

    out = tmp_path / "t.safetensors"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sdcli(*emb_args(empty, out)).one_error(2, "--images", "no .png")
    small = tmp_path / "small"
    small.mkdir()
    Image.new("RGB", (32, 32)).save(small / "x.png")
    r = sdcli(*emb_args(small, out))
    assert r.one_error(2, "x.png is 32x32", "smaller than the training size 64") and r.loads == 0
    def changed(flag, value):
        args = list(emb_args(images, out))
        args[args.index(flag) + 1] = value
        return sdcli(*args)

    r = changed("--token", "star")
    assert r.one_error(2, "--token star", "already in the model's vocabulary") and r.loads == 0
    assert changed("--init-token", "flibbertigibbet").one_error(2, "--init-token flibbertigibbet", "not one token")
    assert sdcli(*emb_args(images, tmp_path / "no" / "t.safetensors")).one_error(2, "does not exist")
    assert sdcli(*emb_args(images, tmp_path / "t.bin")).one_error(2, ".safetensors")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere
            assert sdcli(*emb_args(images, locked / "t.safetensors")).one_error(2, "not writable")
    finally:
        locked.chmod(0o700)
    assert sdcli(*lora_args(images, out, "--prior-preservation")).one_error(2, "--class-prompt")
    assert sdcli(*emb_args(images, out, "--steps", 0)).one_error(2, "--steps 0")


def test_earlier_checkpoints_need_resume_and_the_same_settings(sdcli, images, tmp_path):
    out = tmp_path / "t.safetensors"
    assert sdcli(*emb_args(images, out, "--steps", 2, "--checkpoint-every", 2)).code == 0
    r = sdcli(*emb_args(images, out, "--steps", 2))
    assert r.one_error(2, "holds checkpoints", "--resume") and r.loads == 0
    r = sdcli(*emb_args(images, out, "--steps", 4, "--resume", "--lr", "0.01"))
    assert r.one_error(2, "other settings") and r.loads == 0


def test_mixed_precision_through_accelerate(sdcli, images, tmp_path):
    out = tmp_path / "t.safetensors"
    r = sdcli(*emb_args(images, out, "--steps", 2, "--precision", "bf16", "--device", "cpu", "--json"))
    assert r.code == 0, r.err
    assert tensors(out)["<my-thing>"].dtype.is_floating_point and json.loads(r.out)["status"] == "ok"
