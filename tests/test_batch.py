"""Batch jobs that can be trusted: real processes killed at several points, resume, concurrency,
per-item failures, --json, and inputs that must not do harm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, manifest, pixels, run_process, sdcli_command

# 16 images in 8 batches, long enough to be interrupted in the middle.
LONG = ["--steps", 8, "--H", 64, "--W", 64, "--scheduler", "ddim", "--n_samples", 2, "--n_iter", 8, "--seed", 1,
        "--prompt", "a kettle"]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(sdcli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def samples(outdir: Path) -> list[str]:
    folder = outdir / "samples"
    return sorted(n for n in os.listdir(folder) if not n.startswith(".")) if folder.exists() else []


def wait_for(pred, proc, timeout=120.0) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("kill point not reached")
        time.sleep(0.01)


def check_consistent(outdir: Path, allow_unrecorded: int = 0, allow_torn: int = 0) -> None:
    """Only complete images; every manifest line matches its file; at most `allow_unrecorded` files
    without a line (the instant between numbering a file and appending its line, after SIGKILL)."""
    import hashlib

    from PIL import Image

    lines = (outdir / "manifest.jsonl").read_bytes().split(b"\n") if (outdir / "manifest.jsonl").exists() else []
    records = []
    for line in filter(bytes.strip, lines):  # every line parses: none torn or interleaved
        try:
            records.append(json.loads(line))
        except ValueError:
            allow_torn -= 1
            assert allow_torn >= 0, f"torn manifest line {line[:60]!r}"
    by_path = {r["path"]: r for r in records}
    assert len(by_path) == len(records), "a file recorded twice"
    for r in records:
        assert hashlib.sha256((outdir / r["path"]).read_bytes()).hexdigest() == r["sha256"]
    files = samples(outdir)
    for name in files:
        with Image.open(outdir / "samples" / name) as im:
            im.load()  # complete PNG
    assert len([n for n in files if f"samples/{n}" not in by_path]) <= allow_unrecorded


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    r = run_process("txt2img", "--model", tiny(), *LONG, "--outdir", out, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return out


def assert_same_set(out: Path, ref: Path) -> None:
    assert samples(out) == samples(ref)
    for name in samples(ref):
        assert np.array_equal(pixels(out / "samples" / name), pixels(ref / "samples" / name)), name
    recs = [r for r in manifest(out) if r["status"] == "ok"]
    assert sorted(r["path"] for r in recs) == [f"samples/{n}" for n in samples(ref)]  # none duplicated
    assert len({r["job_id"] for r in recs}) == len(recs)
    assert np.array_equal(pixels(out / "grid-0000.png"), pixels(ref / "grid-0000.png"))


KILLS = [  # (signal, images written before the signal; None: during start-up/model load)
    (signal.SIGINT, 2),
    (signal.SIGTERM, 5),
    (signal.SIGKILL, None),
    (signal.SIGKILL, 1),
    (signal.SIGKILL, 7),
]


@pytest.mark.slow
@pytest.mark.parametrize("sig,after", KILLS, ids=[f"{s.name}-after-{a}" for s, a in KILLS])
def test_interrupt_then_resume_equals_uninterrupted_run(tiny, tmp_path, reference, sig, after):
    out = tmp_path / "out"
    proc = start("txt2img", "--model", tiny(), *LONG, "--outdir", out)
    if after is None:
        time.sleep(1.0)
    else:
        wait_for(lambda: len(samples(out)) >= after, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "interrupted:" in err and "--resume" in err and "Traceback" not in err
    written = samples(out)
    assert len(written) < 16, "the run finished before the signal: the test tested nothing"
    check_consistent(out, allow_unrecorded=1 if sig == signal.SIGKILL else 0)
    if sig != signal.SIGKILL:
        assert not (out / "grid-0000.png").exists()  # nothing half-done

    r = run_process("txt2img", "--model", tiny(), *LONG, "--outdir", out, "--resume", "--json",
                    env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["skipped"] == len(written)  # recovered unrecorded files count as done
    assert summary["skipped"] + summary["generated"] == 16
    assert_same_set(out, reference)
    check_consistent(out)

    again = run_process("txt2img", "--model", tiny(), *LONG, "--outdir", out, "--resume", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["generated"] == 0
    assert_same_set(out, reference)


def test_resume_skips_complete_jobs_and_redoes_damaged_ones(sdcli, tiny, tmp_path):
    args = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 2, "--outdir", tmp_path, "--resume"]
    assert sdcli(*args).code == 0
    first = {n: pixels(tmp_path / "samples" / n) for n in samples(tmp_path)}
    r = sdcli(*args, "--json")
    assert r.code == 0 and json.loads(r.out)["skipped"] == 4 and json.loads(r.out)["generated"] == 0
    # a damaged file (sha256 no longer matches) and a deleted one are generated again, with the same seeds
    (tmp_path / "samples" / "00001.png").write_bytes(b"garbage")
    (tmp_path / "samples" / "00003.png").unlink()
    r = sdcli(*args, "--json")
    summary = json.loads(r.out)
    assert r.code == 0 and summary["skipped"] == 2 and summary["generated"] == 2
    new = {r["seed"]: r["path"] for r in manifest(tmp_path)[-2:]}
    assert sorted(new) == [43, 45]
    assert np.array_equal(pixels(tmp_path / new[45]), first["00003.png"])
    assert (tmp_path / "samples" / "00001.png").read_bytes() == b"garbage"  # never overwritten


def test_a_different_command_is_not_skipped(sdcli, tiny, tmp_path):
    args = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 1, "--outdir", tmp_path, "--resume"]
    assert sdcli(*args).code == 0
    r = sdcli(*args, "--prompt", "something else", "--json")
    assert json.loads(r.out)["generated"] == 1  # job identity covers the prompt


def test_recovery_records_an_unrecorded_complete_sample(sdcli, tiny, tmp_path):
    """kill -9 between numbering a file and appending its line: the next run records it."""
    args = ["txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--outdir", tmp_path]
    assert sdcli(*args).code == 0
    lines = (tmp_path / "manifest.jsonl").read_bytes().split(b"\n")
    (tmp_path / "manifest.jsonl").write_bytes(lines[0] + b"\n" + lines[1][:40])  # second line torn
    (tmp_path / "samples" / ".tmp-old.png").write_bytes(b"half")
    os.utime(tmp_path / "samples" / ".tmp-old.png", (0, 0))
    r = sdcli(*args, "--resume", "--json")
    summary = json.loads(r.out)
    assert r.code == 0 and summary["recovered"] == 1 and summary["skipped"] == 2 and summary["generated"] == 0
    assert not (tmp_path / "samples" / ".tmp-old.png").exists()
    check_consistent(tmp_path, allow_torn=1)  # the torn line stays, skipped by every reader


@pytest.mark.slow
def test_two_concurrent_runs_share_an_outdir(tiny, tmp_path):
    procs = [start("txt2img", "--model", tiny(), *LONG[:-4], "--n_iter", 4, "--seed", seed, "--outdir", tmp_path)
             for seed in (100, 200)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    check_consistent(tmp_path)
    recs = manifest(tmp_path)
    assert len(samples(tmp_path)) == len(recs) == 16
    assert sorted(r["seed"] for r in recs) == list(range(100, 108)) + list(range(200, 208))
    assert sorted(p.name for p in tmp_path.glob("grid-*.png")) == ["grid-0000.png", "grid-0001.png"]


@pytest.mark.slow
def test_a_second_resume_run_refuses_with_exit_4(tiny, tmp_path):
    first = start("txt2img", "--model", tiny(), *LONG, "--outdir", tmp_path, "--resume")
    wait_for(lambda: (tmp_path / ".sdcli-resume.lock").exists() and len(samples(tmp_path)) >= 1, first)
    second = run_process("txt2img", "--model", tiny(), *LONG, "--outdir", tmp_path, "--resume")
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 4
    assert second.stderr.count("sdcli: error:") == 1 and "another sdcli --resume run" in second.stderr


def _img2img_rows(tmp_path: Path, broken: bytes) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(broken)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"p{i}", "image": n}) + "\n"
                            for i, n in enumerate(["a.png", "b.png", "c.png"])))
    return rows


def test_a_bad_row_is_recorded_and_the_batch_goes_on(sdcli, tiny, tmp_path):
    rows = _img2img_rows(tmp_path, b"not a png")
    out = tmp_path / "out"
    args = ["img2img", "--model", tiny("img2img"), "--from-file", rows, "--steps", 2, "--n_samples", 1,
            "--n_iter", 1, "--outdir", out]
    r = sdcli(*args, "--json")
    assert r.code == 1
    summary = json.loads(r.out)
    assert summary["status"] == "failed" and summary["generated"] == 2 and summary["failed"] == 1
    assert summary["failures"][0]["source"].endswith("rows.jsonl:2") and "b.png" in summary["failures"][0]["error"]
    assert set(summary["timings"]) >= {"load_s", "generate_s", "total_s"}
    statuses = [(r["prompt"], r["status"]) for r in manifest(out)]
    assert sorted(statuses) == [("p0", "ok"), ("p1", "failed"), ("p2", "ok")]
    assert "b.png" in r.err and "sdcli: error:" not in r.err  # reported as a warning, counted at the end
    assert r.out.count("\n") == 1  # stdout holds the JSON summary only

    # --fail-fast stops at the first: here before the model loads
    r = sdcli(*args, "--fail-fast")
    assert r.one_error(2, "b.png")

    # fixed input + --resume: only the failed row is generated
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "b.png")
    r = sdcli(*args, "--resume", "--json")
    summary = json.loads(r.out)
    assert r.code == 0 and summary["generated"] == 1 and summary["skipped"] == 2


def test_json_summary_on_success_and_on_error(sdcli, tiny, tmp_path):
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--outdir", tmp_path, "--json")
    summary = json.loads(r.out)
    assert r.code == 0 and summary["status"] == "ok" and summary["exit_code"] == 0
    assert summary["generated"] == 2 and len(summary["images"]) == 2 and summary["grid"].endswith("grid-0000.png")
    r = sdcli("txt2img", "--H", 65, "--json")
    assert r.code == 2 and json.loads(r.out)["status"] == "error" and "--H 65" in json.loads(r.out)["error"]


# --- inputs that must not do harm -------------------------------------------------------------------

@pytest.mark.parametrize("prompt", ["../../escape", "/etc/passwd", "a\x00b", "x" * 5000, "..", "~/.bashrc"])
def test_output_names_never_come_from_prompt_text(sdcli, tiny, tmp_path, prompt):
    out = tmp_path / "out"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 1, "--n_iter", 1, "--outdir", out,
              "--prompt", prompt, "--skip-grid")
    assert r.code == 0, r.err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        "out/manifest.jsonl", "out/samples/00000.png"]
    assert manifest(out)[0]["prompt"] == prompt


def test_configs_never_run_code(sdcli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'steps: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert sdcli("config", "show", "--config", evil).one_error(2, "evil.yaml")
    target = tmp_path / "target.yaml"
    target.write_text("_target_: os.system\n")
    assert sdcli("config", "show", "--config", target).one_error(2, "_target_")
    interp = tmp_path / "interp.yaml"
    interp.write_text("prompt: ${oc.env:HOME}\nnegative_prompt: '${price}'\n")
    r = sdcli("config", "show", "--config", interp)
    assert r.code == 0, r.err
    # taken literally: no environment value (HOME) can reach the prompt, and an unknown name is no error
    assert 'prompt: "${oc.env:HOME}"' in r.out.splitlines() and 'negative_prompt: "${price}"' in r.out.splitlines()
    interp.write_text("steps: ${oc.env:STEPS}\n")
    assert sdcli("config", "show", "--config", interp).one_error(2, "steps", "interpolation")
    assert not marker.exists()


def test_pickles_need_the_unsafe_flag_and_then_load_weights_only(sdcli, tiny, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    common = ["txt2img", *FAST, "--model", tmp_path / "evil.ckpt", "--model-config", tiny(), "--outdir", tmp_path / "o",
              "--no-safety-checker"]
    assert sdcli(*common).one_error(2, "--allow-unsafe-pickle")
    r = sdcli(*common, "--allow-unsafe-pickle")
    assert r.code == 3 and not marker.exists()  # weights_only refused the object


def test_local_custom_code_is_never_run(sdcli, tiny, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny(), model)
    marker = tmp_path / "pwned"
    (model / "evil_unet.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                        "from diffusers import UNet2DConditionModel as EvilUNet\n")
    index = json.loads((model / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (model / "model_index.json").write_text(json.dumps(index))
    r = sdcli("txt2img", "--model", model, *FAST, "--outdir", tmp_path / "o", "--no-safety-checker")
    assert r.code == 3 and not marker.exists()


def test_sources_never_enable_remote_code():
    root = Path(__file__).resolve().parent.parent / "sdcli"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "trust_remote_code=True" not in text and "custom_pipeline" not in text, path
