"""Every error a user can cause: one line on stderr naming the input, the documented exit code, no
traceback, nothing loaded, and existing outputs left byte-identical."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import FAST, run_process, snapshot


@pytest.fixture(scope="module")
def outdir_with_work(tiny, tmp_path_factory):
    """An outdir that already holds a run's outputs (module-wide: every case proves it stays byte-identical)."""
    from sdcli.cli import main

    out = tmp_path_factory.mktemp("existing")
    assert main(["txt2img", "--model", str(tiny()), *map(str, FAST), "--n_samples", "1", "--n_iter", "1",
                 "--outdir", str(out)]) == 0
    return out


def _files(tmp_path):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "broken"\n')
    (tmp_path / "badkey.jsonl").write_text('{"prompt": "ok", "stepz": 3}\n')
    (tmp_path / "badsize.yaml").write_text("- prompt: a\n  W: 100\n")
    (tmp_path / "bad.yaml").write_text("steps: [1,\n")
    (tmp_path / "unknown.yaml").write_text("stepz: 3\n")
    (tmp_path / "wrongtype.yaml").write_text("steps: many\n")
    (tmp_path / "model.ckpt").write_bytes(b"not really a pickle")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty-model").mkdir()


CASES = [
    # (arguments after "txt2img", exit code, words the error line must contain)
    (["--H", "65"], 2, ["--H 65", "multiple of 8"]),
    (["--W", "0"], 2, ["--W 0"]),
    (["--steps", "0"], 2, ["--steps 0"]),
    (["--steps", "abc"], 2, ["--steps", "integer"]),
    (["--n_samples", "0"], 2, ["--n_samples 0"]),
    (["--n_samples", "100000"], 2, ["--n_samples 100000"]),
    (["--seed", "-1"], 2, ["--seed -1"]),
    (["--eta", "2"], 2, ["--eta 2"]),
    (["--scale", "-1"], 2, ["--scale -1"]),
    (["--scheduler", "eulr"], 2, ["--scheduler eulr", "euler"]),
    (["--plms", "--scheduler", "euler"], 2, ["--plms", "--scheduler euler"]),
    (["--device", "gpu"], 2, ["--device gpu"]),
    (["--device", "cuda"], 2, ["--device cuda", "CUDA"]),
    (["--device", "cuda:1"], 2, ["--device cuda:1"]),
    (["--precision", "fp8"], 2, ["--precision fp8"]),
    (["--precision", "fp16", "--device", "cpu"], 2, ["--precision fp16", "CPU"]),
    (["--watermark-text", ""], 2, ["--watermark-text"]),
    (["--frobnicate"], 2, ["--frobnicate"]),
    (["--prompt", "x", "--from-file", "{tmp}/empty.txt"], 2, ["--prompt", "--from-file"]),
    (["--from-file", "{tmp}/missing.txt"], 2, ["missing.txt", "no such file"]),
    (["--from-file", "{tmp}"], 2, ["not a regular file"]),
    (["--from-file", "{tmp}/empty.txt"], 2, ["empty.txt", "no prompts"]),
    (["--from-file", "{tmp}/latin1.txt"], 2, ["latin1.txt", "UTF-8"]),
    (["--from-file", "{tmp}/binary.txt"], 2, ["binary.txt", "binary"]),
    (["--from-file", "{tmp}/bad.jsonl"], 2, ["bad.jsonl:2", "invalid JSON"]),
    (["--from-file", "{tmp}/badkey.jsonl"], 2, ["badkey.jsonl:1", "stepz", "steps"]),
    (["--from-file", "{tmp}/badsize.yaml"], 2, ["badsize.yaml", "W 100", "multiple of 8"]),
    (["--config", "{tmp}/missing.yaml"], 2, ["missing.yaml", "no such file"]),
    (["--config", "{tmp}/bad.yaml"], 2, ["bad.yaml", "invalid YAML"]),
    (["--config", "{tmp}/unknown.yaml"], 2, ["unknown.yaml", "stepz", "steps"]),
    (["--config", "{tmp}/wrongtype.yaml"], 2, ["wrongtype.yaml", "steps"]),
    (["--config", "sd99"], 2, ["sd99", "preset"]),
    (["--set", "steps"], 2, ["--set steps", "key=value"]),
    (["--set", "stepz=3"], 2, ["stepz", "steps"]),
    (["--outdir", "{tmp}/a-file"], 2, ["--outdir", "a-file", "not a folder"]),
    (["--outdir", "{tmp}/a-file/sub"], 2, ["--outdir", "a-file"]),
    (["--model", "{tmp}/missing-model"], 3, ["missing-model"]),
    (["--model", "./missing-relative"], 3, ["missing-relative"]),
    (["--model", "{tmp}/empty-model"], 3, ["empty-model", "model_index.json"]),
    (["--model", "{tmp}/model.ckpt"], 2, ["model.ckpt", "--allow-unsafe-pickle"]),
    (["--model", "{tmp}/absent.safetensors"], 3, ["absent.safetensors", "no such file"]),
    (["--model", "nobody/uncached-model"], 3, ["nobody/uncached-model", "HF_HUB_OFFLINE"]),
]


@pytest.mark.parametrize("args,code,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_clear_line(sdcli, tiny, tmp_path, outdir_with_work, args, code, words):
    _files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    words = [w.replace("{tmp}", str(tmp_path)) for w in words]
    if "--outdir" not in args:
        args += ["--outdir", str(outdir_with_work)]
    if "--model" not in args:
        args += ["--model", str(tiny())]
    before = snapshot(outdir_with_work)
    r = sdcli("txt2img", *FAST, *args)
    assert r.one_error(code, *words)
    assert r.loads == 0  # checked before any model was loaded
    assert snapshot(outdir_with_work) == before


def test_other_commands_errors(sdcli, tmp_path):
    (tmp_path / "not-an-image.png").write_text("hello")
    assert sdcli("watermark", "decode", tmp_path / "missing.png").one_error(2, "missing.png")
    assert sdcli("info", tmp_path / "not-an-image.png").one_error(2, "not-an-image.png")
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    assert sdcli("watermark", "decode", tmp_path / "small.png").one_error(2, "small.png", "256x256")
    assert sdcli("config", "show", "--task", "paint").one_error(2, "paint")
    assert sdcli("nosuchcommand").one_error(2, "nosuchcommand")


def test_debug_shows_the_traceback(sdcli, tmp_path):
    r = sdcli("txt2img", "--H", "65", "--debug")
    assert r.code == 2 and "Traceback" in r.err


def test_console_script_exit_codes_and_stderr(tmp_path):
    r = run_process("txt2img", "--model", tmp_path / "nothing-here", "--outdir", tmp_path / "o")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("sdcli: error: --model")
    r = run_process("txt2img", "--steps", "x")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "sdcli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("sdcli ")


def test_help_and_argument_errors_never_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from sdcli.cli import main\n"
        "for argv in (['--help'], ['txt2img', '--help'], ['config', 'show'], ['txt2img', '--H', '65'],\n"
        "             ['txt2img', '--from-file', 'missing.txt'], ['txt2img', '--model', '/nonexistent']):\n"
        "    main(argv)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'imwatermark') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY []" in r.stdout, r.stdout + r.stderr


def _images(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / "ok.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small-mask.png")
    Image.new("L", (20000, 8)).save(tmp_path / "huge.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "ok_mask.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "only-text").mkdir()
    (tmp_path / "only-text" / "readme.txt").write_text("x")
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "no-images").mkdir()


IMAGE_CASES = [
    # (subcommand and arguments, exit code, words the error line must contain)
    (["img2img", "--init-img", "{tmp}/missing.png"], 2, ["--image", "missing.png", "no such file"]),
    (["img2img", "--init-img", "{tmp}/truncated.png"], 2, ["truncated.png", "truncated"]),
    (["img2img", "--init-img", "{tmp}/text.png"], 2, ["text.png", "not an image"]),
    (["img2img", "--init-img", "{tmp}/zero.png"], 2, ["zero.png", "empty"]),
    (["img2img", "--init-img", "{tmp}/huge.png"], 2, ["huge.png", "too large"]),
    (["img2img", "--init-img", "{tmp}/no-images"], 2, ["no-images", "no images"]),
    (["img2img", "--init-img", "{tmp}/*.jpg"], 2, ["*.jpg", "no file matches"]),
    (["img2img", "--image", "{tmp}/only-text"], 2, ["--image", "only-text", "no images"]),
    (["img2img"], 2, ["--image"]),
    (["img2img", "--prompt", "p"], 2, ["--image"]),
    (["img2img", "--init-img", "{tmp}/ok.png", "--strength", "1.5"], 2, ["--strength 1.5"]),
    (["img2img", "--init-img", "{tmp}/ok.png", "--strength", "0"], 2, ["--strength 0", "--steps"]),
    (["img2img", "--init-img", "{tmp}/ok.png", "--resize-mode", "squash"], 2, ["--resize-mode squash"]),
    (["inpaint", "--image", "{tmp}/ok.png"], 2, ["--mask"]),
    (["inpaint", "--image", "{tmp}/ok.png", "--mask", "{tmp}/truncated.png"], 2, ["--mask", "truncated.png"]),
    (["inpaint", "--image", "{tmp}/text.png", "--mask", "{tmp}/ok_mask.png"], 2, ["--image", "text.png"]),
    (["inpaint", "--image", "{tmp}/ok.png", "--mask", "{tmp}/zero.png"], 2, ["--mask", "zero.png", "empty"]),
    (["inpaint", "--indir", "{tmp}/nowhere"], 2, ["--indir", "nowhere", "no such folder"]),
    (["inpaint", "--image", "{tmp}/ok.png", "--mask", "{tmp}/small-mask.png"], 2, ["--mask", "small-mask.png", "differs"]),
    (["inpaint", "--indir", "{tmp}/no-images"], 2, ["--indir", "_mask.png"]),
    (["depth2img", "--image", "{tmp}/ok.png", "--depth-map", "{tmp}/text.png"], 2, ["--depth-map", "text.png"]),
    (["depth2img", "--image", "{tmp}/ok.png", "--depth-map", "{tmp}/missing.png"], 2, ["--depth-map", "missing.png"]),
    (["instruct-edit", "--input", "{tmp}/truncated.png", "-p", "p"], 2, ["--image", "truncated.png"]),
    (["instruct-edit", "--input", "{tmp}/ok.png"], 2, ["--prompt", "instruction"]),
    (["instruct-edit", "--input", "{tmp}/ok.png", "--edit", "x", "--cfg-image", "0.5"], 2, ["--image-guidance-scale 0.5"]),
    (["instruct-edit", "--input", "{tmp}/ok.png", "--edit", "x", "--output", "{tmp}/out.gif"], 2, ["--output", "out.gif"]),
    (["instruct-edit", "--input", "{tmp}/ok.png", "--edit", "x", "--output", "{tmp}/o.png", "--n_samples", "2"], 2, ["--output", "one image"]),
    (["instruct-edit", "--input", "{tmp}/ok.png", "--edit", "x", "--resolution", "10"], 2, ["--resolution 10"]),
]


@pytest.mark.parametrize("args,code,words", IMAGE_CASES, ids=[" ".join(c[0]) for c in IMAGE_CASES])
def test_bad_image_input_is_one_clear_line(sdcli, tmp_path, outdir_with_work, args, code, words):
    _images(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    words = [w.replace("{tmp}", str(tmp_path)) for w in words]
    before = snapshot(outdir_with_work)
    r = sdcli(*args, "--model", "tiny", "--steps", 2, "--n_iter", 1, "--outdir", outdir_with_work)
    assert r.one_error(code, *words)
    assert r.loads == 0  # checked before the model loads
    assert snapshot(outdir_with_work) == before


def test_unwritable_outdir(sdcli, tiny):
    """/proc refuses new files even to root."""
    assert sdcli("txt2img", "--model", tiny(), *FAST, "--outdir", "/proc/sdcli-test").one_error(2, "--outdir", "/proc/sdcli-test")
