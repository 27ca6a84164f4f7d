"""Exit codes and streams (dry runs that refuse what the run would, closed stdout, --json on every failure,
commands over several files, shell completion) and loading what users have (fp16-only folders, a hub id as
--model-config, the messages when something is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import FAST, manifest, run_process, sdcli_command

ONE = ["--n_samples", 1, "--n_iter", 1]


# --- dry runs refuse what the run would refuse, and create nothing ---------------------------------------

@pytest.mark.parametrize("args,code,words", [
    (["--device", "cuda"], 2, ["--device cuda", "CUDA"]),
    (["--device", "cpu", "--precision", "fp16"], 2, ["--precision fp16", "CPU"]),
    (["--device", "cpu", "--offload", "model"], 2, ["--offload model", "CUDA"]),
])
def test_dry_run_refuses_what_the_run_would(sdcli, tiny, tmp_path, args, code, words):
    out = tmp_path / "never"
    r = sdcli("txt2img", "--model", tiny(), *FAST, *args, "--outdir", out, "--dry-run")
    assert r.one_error(code, *words) and r.loads == 0
    assert not out.exists()


def test_dry_run_refuses_a_missing_safety_checker_and_says_how_to_opt_out(sdcli, tiny, tmp_path):
    model = tmp_path / "no-checker"
    shutil.copytree(tiny(), model)
    shutil.rmtree(model / "safety_checker")
    r = sdcli("txt2img", "--model", model, *FAST, "--device", "cpu", "--outdir", tmp_path / "o", "--dry-run")
    assert r.one_error(3, "safety checker", "--no-safety-checker") and r.loads == 0
    r = sdcli("txt2img", "--model", model, *FAST, "--device", "cpu", "--outdir", tmp_path / "o", "--dry-run",
              "--no-safety-checker")
    assert r.code == 0, r.err


def test_dry_run_creates_nothing_on_disk(sdcli, tiny, tmp_path):
    out = tmp_path / "a" / "b"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--device", "cpu", "--outdir", out, "--dry-run")
    assert r.code == 0, r.err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--device", "cpu", "--outdir", tmp_path / "file" / "o", "--dry-run")
    assert r.one_error(2, "--outdir", "is a file")


@pytest.mark.slow
@pytest.mark.parametrize("args", [["txt2img", "--model", "tiny", "--device", "cpu", "--n_iter", 50, "--dry-run"],
                                  ["config", "show"]], ids=["dry-run", "config show"])
def test_a_closed_stdout_ends_quietly_with_its_own_code(tmp_path, args):
    """`sdcli ... --dry-run | head -0`: the reader is gone before anything is written."""
    proc = subprocess.Popen(sdcli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    proc.stdout.close()  # the reader leaves at once
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err, err


# --- --json: one document for every failure --------------------------------------------------------------

@pytest.mark.parametrize("args,code", [
    (["--steps", "abc"], 2),  # option parsing (click)
    (["--frobnicate"], 2),  # unknown option (click)
    (["--H", "65"], 2),  # config check
    (["--model", "/nonexistent/model"], 3),  # model source
])
def test_json_failure_is_one_document_on_stdout(sdcli, args, code):
    r = sdcli("txt2img", "--json", *args)
    assert r.code == code
    doc = json.loads(r.out)  # exactly one document
    assert doc["status"] == "error" and doc["exit_code"] == code and doc["error"]
    assert len(r.error_lines) == 1


# --- commands over several files go on past a bad one ---------------------------------------------------

def test_info_and_watermark_decode_report_every_file(sdcli, tiny, tmp_path):
    out = tmp_path / "o"
    assert sdcli("txt2img", "--model", tiny(), "--steps", 2, "--H", 256, "--W", 256, *ONE, "--outdir", out).code == 0
    good = out / "samples" / "00000.png"
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    r = sdcli("info", good, bad, good)
    assert r.code == 2 and r.out.count(f"== {good}") == 2
    assert r.error_lines == [f"sdcli: error: {bad}: not a readable image (UnidentifiedImageError)"]
    r = sdcli("watermark", "decode", bad, good, tmp_path / "missing.png")
    assert r.code == 2 and r.out.splitlines() == [f"{good}: SDV2"] and len(r.error_lines) == 2


# --- instruct-edit --output ------------------------------------------------------------------------------

def test_instruct_edit_output_writes_no_manifest_unless_asked(sdcli, tiny, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "in.png")
    common = ["instruct-edit", "--model", tiny("instruct-edit"), "--input", tmp_path / "in.png", "--edit", "x",
              "--steps", 2, "--no-safety-checker"]
    dest = tmp_path / "dest"
    dest.mkdir()
    assert sdcli(*common, "--output", dest / "x.png").code == 0
    assert sorted(p.name for p in dest.iterdir()) == ["x.png"]
    assert sdcli(*common, "--output", dest / "y.png", "--manifest").code == 0
    assert [r["path"] for r in manifest(dest)] == ["y.png"]


# --- shell completion ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_shell_completion(tmp_path):
    """Typer detects the shell from the parent process: run the commands from bash, as a user would."""
    import os

    sdcli = sdcli_command()[0] if len(sdcli_command()) == 1 else None
    if sdcli is None:
        pytest.skip("needs the installed console script")

    def from_bash(command: str, **env) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f"{sdcli} {command}; exit $?"], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120)

    r = from_bash("--show-completion")
    assert r.returncode == 0 and "_sdcli_completion" in r.stdout, r.stderr
    r = run_process(env={"_SDCLI_COMPLETE": "complete_bash", "COMP_WORDS": "sdcli txt2img --n_s", "COMP_CWORD": "2"})
    assert r.returncode == 0 and r.stdout.split() == ["--n_samples"]
    r = from_bash("--install-completion", HOME=str(tmp_path))
    assert r.returncode == 0 and (tmp_path / ".bash_completions" / "sdcli.sh").is_file(), r.stderr


# --- loading what users have -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp16_only(tiny, tmp_path_factory):
    """The tiny model as an fp16-only release: every weights file is *.fp16.safetensors."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    folder = tmp_path_factory.mktemp("fp16") / "model"
    pipe = StableDiffusionPipeline.from_pretrained(tiny(), safety_checker=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16")
    checker = StableDiffusionSafetyChecker.from_pretrained(tiny() / "safety_checker").to(torch.float16)
    checker.save_pretrained(folder / "safety_checker", variant="fp16")
    shutil.copytree(tiny() / "feature_extractor", folder / "feature_extractor", dirs_exist_ok=True)
    assert not list(folder.rglob("diffusion_pytorch_model.safetensors"))
    return folder


def test_fp16_only_folder_loads_with_or_without_variant(sdcli, fp16_only, tmp_path):
    for extra in ([], ["--variant", "fp16"]):
        r = sdcli("txt2img", "--model", fp16_only, *FAST, *ONE, "--device", "cpu", "--outdir", tmp_path, *extra)
        assert r.code == 0, r.err
    assert [m["precision"] for m in manifest(tmp_path)] == ["float32", "float32"]
    r = sdcli("txt2img", "--model", fp16_only, *FAST, "--variant", "bf16", "--outdir", tmp_path, "--dry-run")
    assert r.one_error(2, "--variant bf16", "fp16") and r.loads == 0


def _cache_repo(tiny, name: str, without_checker: bool = False) -> str:
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HUB_CACHE"]) / f"models--acme--{name}"
    if not repo.exists():
        shutil.copytree(tiny(), repo / "snapshots" / rev)
        if without_checker:
            shutil.rmtree(repo / "snapshots" / rev / "safety_checker")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
    return f"acme/{name}"


def test_cached_hub_model_messages(sdcli, tiny, tmp_path):
    bare = _cache_repo(tiny, "no-checker", without_checker=True)
    r = sdcli("txt2img", "--model", bare, *FAST, *ONE, "--device", "cpu", "--outdir", tmp_path)
    assert r.one_error(3, bare, "safety checker", "cache", "--no-safety-checker") and r.loads == 0
    assert "connect" not in r.err
    r = sdcli("txt2img", "--model", "acme/no-chekcer", *FAST, "--outdir", tmp_path)
    assert r.one_error(3, "did you mean 'acme/no-checker'")


@pytest.mark.slow
def test_library_warnings_are_silenced():
    """huggingface_hub logs "Could not reach the Hub ..." when a cached model loads without a network (and
    HF_HUB_OFFLINE unset): sdcli's quieted libraries keep it off stderr (a process: loggers keep the stderr
    they were set up with)."""
    import sys

    code = ("import sys\n"
            "from huggingface_hub.utils import logging\n"
            "log = logging.get_logger('huggingface_hub.hf_api')\n"
            "log.warning('before: Could not reach the Hub')\n"
            "from sdcli.libraries import quiet_libraries\n"
            "quiet_libraries()\n"
            "log.warning('after: Could not reach the Hub')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "before:" in r.stderr and "after:" not in r.stderr, r.stderr


def test_single_file_with_a_cached_hub_id_as_model_config(sdcli, tiny, tmp_path):
    from ldm_export import export_single_file

    repo = _cache_repo(tiny, "tiny-config")
    single = export_single_file(tiny(), tmp_path / "model.safetensors")
    r = sdcli("txt2img", "--model", single, "--model-config", repo, *FAST, *ONE, "--device", "cpu", "--outdir", tmp_path)
    assert r.code == 0, r.err
    r = sdcli("txt2img", "--model", single, "--model-config", "acme/not-cached", *FAST, "--outdir", tmp_path)
    assert r.one_error(3, "--model-config acme/not-cached", "cache")


def test_single_file_checker_message_names_model_config(sdcli, tiny, tmp_path):
    from ldm_export import export_single_file

    config = tmp_path / "config"
    shutil.copytree(tiny(), config)
    shutil.rmtree(config / "safety_checker")
    single = export_single_file(tiny(), tmp_path / "model.safetensors")
    r = sdcli("txt2img", "--model", single, "--model-config", config, *FAST, "--outdir", tmp_path / "o", "--dry-run")
    assert r.one_error(3, "--model-config", "--no-safety-checker")


# --- prompts longer than the text encoder's window -------------------------------------------------------

def test_a_truncated_prompt_is_warned_about_once_and_recorded(sdcli, tiny, tmp_path):
    """--prompt-syntax none keeps plain truncation. The tiny model's tokenizer has one token per character: 75
    fit in its window. (The default syntax encodes long prompts in chunks: test_concepts.py.)"""
    long = "word " * 20 + "zebra giraffe"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--prompt", long,
              "--prompt-syntax", "none", "--outdir", tmp_path / "long")
    assert r.code == 0, r.err
    warnings = [line for line in r.err_lines if "dropped" in line]
    assert len(warnings) == 1 and "zebra giraffe" in warnings[0] and "75 tokens" in warnings[0]
    assert [m["truncated"] for m in manifest(tmp_path / "long")] == [True, True]
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--prompt", "a zebra", "--outdir", tmp_path / "short")
    assert r.code == 0 and "dropped" not in r.err
    assert manifest(tmp_path / "short")[0]["truncated"] is False
