"""Hostile inputs, by class (issue 15): parsers and memory bounded, text split and decoded only as users
mean it. Every case ends in a documented exit code with one error line naming the input, or works; never a
crash (exit 1 with an exception name) or a hang. All run as dry runs: nothing needs a model."""

from __future__ import annotations

import json

import pytest

DRY = ["--model", "tiny", "--device", "cpu", "--dry-run"]

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def _write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


# --- inputs that would blow up the parsers or memory -------------------------------------------------------

PARSER_CASES = [
    # (file name, content, how it is given, words of the error line)
    ("bomb.yaml", ALIAS_BOMB, "--config", ["bomb.yaml", "aliases"]),
    ("bomb-prompts.yaml", "prompts: &p [a, b]\n" + ALIAS_BOMB.replace("a: &a", "z: &a"), "--from-file",
     ["bomb-prompts.yaml", "aliases"]),
    ("cycle.yaml", "steps: &s [*s]\n", "--config", ["cycle.yaml", "nested"]),
    ("cycle-prompts.yaml", "- &r [*r]\n", "--from-file", ["cycle-prompts.yaml", "nested"]),
    ("deep.yaml", "steps: " + "[" * 5000 + "]" * 5000 + "\n", "--config", ["deep.yaml"]),
    ("deep-flow.yaml", "[" * 5000 + "]" * 5000 + "\n", "--from-file", ["deep-flow.yaml"]),
    ("deep.jsonl", '{"prompt": "a", "x": ' + "[" * 100000 + "]" * 100000 + "}\n", "--from-file", ["deep.jsonl:1", "nested"]),
    ("inf.yaml", "steps: .inf\n", "--config", ["inf.yaml", "steps"]),
    ("huge.yaml", "steps: 1.0e400\n", "--config", ["huge.yaml", "steps"]),
    ("seed.jsonl", '{"prompt": "a", "seed": 1e400}\n', "--from-file", ["seed.jsonl:1", "seed"]),
]


@pytest.mark.parametrize("name,content,flag,words", PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_parser_bombs_are_usage_errors(sdcli, tmp_path, name, content, flag, words):
    path = _write(tmp_path, name, content)
    r = sdcli("txt2img", *DRY, flag, path, "--outdir", tmp_path / "o")
    assert r.one_error(2, *words)


@pytest.mark.parametrize("args,words", [
    (["--set", "steps=1e400"], ["steps"]),
    (["--set", "n_iter=1.0e400"], ["n_iter"]),
    (["--repeat", "10000", "--n_iter", "100000"], ["--repeat 10000", "--n_iter 100000", "split"]),
    (["--n_samples", "64", "--n_iter", "100000"], ["--n_samples 64", "split"]),
])
def test_counts_and_numbers_out_of_bounds_are_refused_before_building_anything(sdcli, tmp_path, args, words):
    rows = _write(tmp_path, "p.txt", "a\nb\n")
    extra = ["--from-file", rows] if "--repeat" in args else []
    r = sdcli("txt2img", *DRY, *extra, *args, "--outdir", tmp_path / "o")
    assert r.one_error(2, *words)


def test_a_csv_field_over_128_kib_is_a_prompt_like_any_other(sdcli, tmp_path):
    long = "a cat " * 30000  # 180 KB
    rows = _write(tmp_path, "long.csv", f'prompt,seed\n"{long}",7\nshort,8\n')
    r = sdcli("txt2img", *DRY, "--from-file", rows, "--n_samples", 1, "--n_iter", 1, "--outdir", tmp_path / "o")
    assert r.code == 0, r.err
    jobs = [json.loads(line) for line in r.out.splitlines()]
    assert [(len(j["prompt"]), j["seed"]) for j in jobs] == [(len(long), 7), (5, 8)]


# --- text split and decoded only as users mean it ----------------------------------------------------------

@pytest.mark.parametrize("separator", ["\f", "\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\v"])
def test_txt_lines_split_at_line_feeds_only(sdcli, tmp_path, separator):
    rows = _write(tmp_path, "p.txt", f"one{separator}still one\r\ntwo\n")
    r = sdcli("txt2img", *DRY, "--from-file", rows, "--n_samples", 1, "--n_iter", 1, "--outdir", tmp_path / "o")
    assert r.code == 0, r.err
    jobs = [json.loads(line) for line in r.out.splitlines()]
    assert [(j["prompt"], j["seed"]) for j in jobs] == [(f"one{separator}still one", 42), ("two", 43)]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_files_are_named_as_such(sdcli, tmp_path, encoding):
    rows = _write(tmp_path, "p.txt", "a red circle\nblue square\n".encode(encoding))
    assert sdcli("txt2img", *DRY, "--from-file", rows, "--outdir", tmp_path / "o").one_error(2, "p.txt", "UTF-16",
                                                                                           "UTF-8")
    config = _write(tmp_path, "c.yaml", "steps: 3\n".encode(encoding))
    assert sdcli("txt2img", *DRY, "--config", config, "--outdir", tmp_path / "o").one_error(2, "c.yaml", "UTF-16")


def test_yaml_anchors_for_shared_settings_still_work(sdcli, tmp_path):
    rows = _write(tmp_path, "p.yaml", "- &base {prompt: a cat, steps: 3, seed: 5}\n- {<<: *base, prompt: a dog}\n")
    r = sdcli("txt2img", *DRY, "--from-file", rows, "--n_samples", 1, "--n_iter", 1, "--outdir", tmp_path / "o")
    assert r.code == 0, r.err
    jobs = [json.loads(line) for line in r.out.splitlines()]
    assert [(j["prompt"], j["steps"], j["seed"]) for j in jobs] == [("a cat", 3, 5), ("a dog", 3, 5)]


# --- the process's own environment --------------------------------------------------------------------------

@pytest.mark.slow
def test_closed_stderr_and_stdout_do_not_crash_or_corrupt_outputs(tiny, tmp_path):
    """`sdcli ... 2>&- >&-`: the run works, and nothing meant for stderr lands in a file it opens."""
    import os
    import subprocess

    from helpers import manifest, sdcli_command

    out = tmp_path / "o"
    args = sdcli_command("txt2img", "--model", tiny(), "--steps", 2, "--H", 64, "--W", 64, "--n_samples", 1,
                         "--n_iter", 1, "--outdir", out, "--json")

    def close_streams():
        os.close(1)
        os.close(2)

    r = subprocess.run(args, preexec_fn=close_streams, timeout=300)
    assert r.returncode == 0
    assert [m["seed"] for m in manifest(out)] == [42]  # every manifest line is JSON: nothing else was written in


@pytest.mark.slow
def test_ctrl_c_at_start_up_is_no_traceback(tmp_path):
    import signal
    import subprocess
    import time

    from helpers import sdcli_command

    for delay in (0.0, 0.03, 0.06, 0.1, 0.2):
        proc = subprocess.Popen(sdcli_command("config", "show"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        if "init_import_site" in err:
            continue  # the signal came while the interpreter itself was starting, before any sdcli code ran
        assert proc.returncode in (0, 130, -signal.SIGINT), (delay, proc.returncode, err)
        assert "Traceback" not in err, (delay, err)


@pytest.mark.parametrize("cache", ["a-file", "a-file/below"])
def test_an_unusable_cache_is_named(sdcli, tmp_path, monkeypatch, cache):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("SDCLI_CACHE", str(tmp_path / cache))
    r = sdcli("txt2img", "--model", "tiny", "--device", "cpu", "--outdir", tmp_path / "o", "--dry-run")
    assert r.one_error(2, "--model tiny", "SDCLI_CACHE")


# --- truthful records --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--seed", str(2**63 - 1), "--n_samples", "2"], ["--seed 9223372036854775807", "image 2", "smaller seed"]),
    (["--seed", str(2**63 - 2), "--n_samples", "3", "--fixed-code"], ["--seed", "image 3"]),
])
def test_every_recorded_seed_is_one_seed_accepts(sdcli, tmp_path, args, words):
    r = sdcli("txt2img", *DRY, "--n_iter", 1, *args, "--outdir", tmp_path / "o")
    assert r.one_error(2, *words)
    r = sdcli("txt2img", *DRY, "--n_iter", 1, "--n_samples", 1, "--seed", str(2**63 - 1), "--outdir", tmp_path / "o")
    assert r.code == 0 and json.loads(r.out)["seed"] == 2**63 - 1


def test_an_input_replaced_during_the_run_fails_its_batch_instead_of_being_misrecorded(sdcli, tiny, tmp_path,
                                                                                     monkeypatch):
    from PIL import Image

    from helpers import manifest
    from sdcli import plan as plan_module

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(image)
    real_plan = plan_module.plan

    def plan_then_replace(cfg, **kw):
        p = real_plan(cfg, **kw)
        Image.new("RGB", (64, 64), (10, 10, 200)).save(image)  # another picture, same name, after the checks
        return p

    monkeypatch.setattr(plan_module, "plan", plan_then_replace)
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", image, "--steps", 2, "--n_samples", 1, "--n_iter", 1,
              "--outdir", tmp_path / "o", "--no-safety-checker")
    assert r.code == 1 and "changed on disk" in r.err
    recs = manifest(tmp_path / "o")
    assert [m["status"] for m in recs] == ["failed"] and "changed on disk" in recs[0]["error"]


def test_output_that_is_a_folder_is_refused_before_loading(sdcli, tiny, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    (tmp_path / "out.png").mkdir()
    r = sdcli("instruct-edit", "--model", tiny("instruct-edit"), "--input", tmp_path / "in.png", "--edit", "x",
              "--output", tmp_path / "out.png")
    assert r.one_error(2, "--output", "out.png", "folder") and r.loads == 0


# --- an outdir that one bad line, or one odd file, must not make unusable ----------------------------------

RUN = ["txt2img", "--prompt", "a kettle", "--steps", 1, "--H", 64, "--W", 64, "--n_samples", 1, "--n_iter", 2,
       "--scheduler", "ddim", "--no-safety-checker"]
DAMAGED_LINES = ["null", "[]", "3", '"x"', "true", '{"job_id": 3, "path": ["a"], "sha256": {}}',
                 '{"job_id": "abc", "path": "../../etc/passwd", "sha256": "0", "status": "ok"}',
                 '{"job_id": "abc", "path": "/etc/passwd", "sha256": "0"}', '{"status": ["ok"]}', "{" * 10000]


@pytest.fixture(scope="module")
def finished_outdir(tiny, tmp_path_factory):
    """An outdir holding a finished run of RUN (module-wide; each case works on a copy)."""
    from sdcli.cli import main

    out = tmp_path_factory.mktemp("finished") / "o"
    assert main([*map(str, RUN), "--model", str(tiny()), "--outdir", str(out)]) == 0
    return out


@pytest.mark.parametrize("line", DAMAGED_LINES, ids=range(len(DAMAGED_LINES)))
def test_a_damaged_manifest_line_is_skipped_and_reported(sdcli, tiny, tmp_path, finished_outdir, line):
    import shutil

    from sdcli.manifest import read_manifest

    out = tmp_path / "o"
    shutil.copytree(finished_outdir, out)
    with open(out / "manifest.jsonl", "a") as f:
        f.write(line + "\n")
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume")
    assert r.code == 0, r.err
    assert "already complete" in r.err and "damaged line" in r.err and "line 3" in r.err
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out)  # a plain run into the same folder
    assert r.code == 0, r.err
    assert len([m for m in read_manifest(out) if str(m.get("path")).startswith("samples/")]) == 4


def _fifo(path):
    import os

    os.mkfifo(path)


def _folder(path):
    path.mkdir()


def _link_outside(path):
    outside = path.parent.parent / f"outside-{path.name}"
    outside.write_text("precious\n")
    path.symlink_to(outside)


@pytest.mark.parametrize("name", ["manifest.jsonl", ".sdcli-resume.lock"])
@pytest.mark.parametrize("make", [_fifo, _folder, _link_outside], ids=["fifo", "folder", "symlink"])
def test_sdcli_files_that_are_not_regular_files_are_refused_not_followed(sdcli, tiny, tmp_path, name, make):
    from helpers import deadline

    out = tmp_path / "o"
    out.mkdir()
    make(out / name)
    with deadline(60):
        r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume")
    assert r.one_error(2, name, "remove it")
    outside = tmp_path / f"outside-{name}"
    assert not outside.exists() or outside.read_text() == "precious\n"  # never written through the link


def test_a_recorded_sample_replaced_by_a_fifo_does_not_hang_resume(sdcli, tiny, tmp_path):
    import os

    from helpers import deadline, manifest

    out = tmp_path / "o"
    assert sdcli(*RUN, "--model", tiny(), "--outdir", out).code == 0
    first = out / manifest(out)[0]["path"]
    first.unlink()
    os.mkfifo(first)
    with deadline(60):
        r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume")
    assert r.code == 0 and "1 of 2 image(s) already complete" in r.err, r.err


# --- nothing the run promised is lost at its end -----------------------------------------------------------

def test_resume_writes_the_grid_a_killed_run_did_not(sdcli, tiny, tmp_path, finished_outdir):
    import shutil

    out = tmp_path / "o"
    shutil.copytree(finished_outdir, out)
    for grid in out.glob("grid-*.png"):
        grid.unlink()  # as if killed after the last sample was recorded
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume", "--json")
    assert r.code == 0 and r.loads == 0, r.err
    assert json.loads(r.out)["grid"] == str(out / "grid-0000.png") and "writing the grid" in r.err
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume", "--json")
    assert r.code == 0 and json.loads(r.out)["grid"] is None and "nothing to generate" in r.err
    assert sorted(p.name for p in out.glob("grid-*")) == ["grid-0000.png"]


def test_disk_full_at_the_grid_reports_counts_and_resume_finishes(sdcli, tiny, tmp_path, monkeypatch):
    import errno

    from sdcli import outputs

    real = outputs.write_numbered

    def full(folder, data, pattern, fmt):
        if "grid" in fmt:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, data, pattern, fmt)

    monkeypatch.setattr(outputs, "write_numbered", full)
    out = tmp_path / "o"
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--json")
    assert r.code == 1 and "disk full" in r.err
    doc = json.loads(r.out)
    assert doc["status"] == "error" and doc["generated"] == 2 and len(doc["images"]) == 2
    monkeypatch.setattr(outputs, "write_numbered", real)
    r = sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume")
    assert r.code == 0 and (out / "grid-0000.png").is_file(), r.err


def test_resume_removes_the_temporaries_of_runs_that_are_gone(sdcli, tiny, tmp_path, finished_outdir):
    import os
    import shutil

    out = tmp_path / "o"
    shutil.copytree(finished_outdir, out)
    dead = [out / ".tmp-999999999-ab.png", out / "samples" / ".tmp-999999999-cd.png"]
    alive = out / f".tmp-{os.getpid()}-ef.png"  # a live writer's file is kept
    for path in [*dead, alive]:
        path.write_bytes(b"half an image")
    assert sdcli(*RUN, "--model", tiny(), "--outdir", out, "--resume").code == 0
    assert not any(p.exists() for p in dead) and alive.exists()


# --- names and text that are not UTF-8 ----------------------------------------------------------------------

def test_an_input_file_name_that_is_not_utf8_is_recorded_escaped(sdcli, tiny, tmp_path):
    import os

    from PIL import Image

    from helpers import manifest

    name = os.fsdecode(b"caf\xe9.png")
    Image.new("RGB", (64, 64), (90, 20, 20)).save(tmp_path / name)
    out = tmp_path / "o"
    r = sdcli("img2img", "--model", tiny("img2img"), "--image", tmp_path / name, "--steps", 2, "--n_samples", 1,
              "--n_iter", 1, "--outdir", out, "--json")
    assert r.code == 0, r.err
    assert manifest(out)[0]["input_image"] == "caf\\xe9.png"
    assert "Init image: caf\\xe9.png" in sdcli("info", out / "samples" / "00000.png").out


def test_a_prompt_that_is_not_utf8_is_a_usage_error(sdcli, tmp_path):
    import os

    r = sdcli("txt2img", *DRY, "--prompt", os.fsdecode(b"a \xff cat"), "--outdir", tmp_path / "o")
    assert r.one_error(2, "--prompt", "UTF-8")


def test_a_samples_folder_that_is_a_symlink_is_refused(sdcli, tiny, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "o"
    out.mkdir()
    (out / "samples").symlink_to(elsewhere)
    for extra in ([], ["--dry-run"]):
        r = sdcli(*RUN, "--model", tiny(), "--outdir", out, *extra)
        assert r.one_error(2, "samples", "symbolic link") and r.loads == 0
    assert list(elsewhere.iterdir()) == []


# --- paths a user names that are not regular files -----------------------------------------------------------

def _special(tmp_path, kind: str) -> str:
    import os

    if kind == "fifo":
        os.mkfifo(tmp_path / "special")
        return str(tmp_path / "special")
    if kind == "folder":
        (tmp_path / "special").mkdir()
        return str(tmp_path / "special")
    return "/dev/zero"


SPECIAL_INPUTS = [
    ("txt2img", ["--from-file", "{x}"], ["--from-file"]),
    ("txt2img", ["--config", "{x}"], ["--config"]),
    ("img2img", ["--image", "{x}"], ["--image"]),
    ("inpaint", ["--image", "{ok}", "--mask", "{x}"], ["--mask"]),
    ("depth2img", ["--image", "{ok}", "--depth-map", "{x}"], ["--depth-map"]),
    ("info", ["{x}"], []),
    ("watermark decode", ["{x}"], []),
]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
@pytest.mark.parametrize("command,args,words", SPECIAL_INPUTS, ids=[f"{c[0]} {c[1][-2] if len(c[1]) > 1 else ''}"
                                                                   for c in SPECIAL_INPUTS])
def test_inputs_that_are_not_regular_files_never_hang_or_read_without_end(sdcli, tmp_path, kind, command, args,
                                                                           words):
    from PIL import Image

    from helpers import deadline

    if kind == "folder" and command in ("img2img",):
        pytest.skip("a folder is a valid --image (its images); covered by the bad-image table")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    special = _special(tmp_path, kind)
    args = [a.replace("{x}", special).replace("{ok}", str(tmp_path / "ok.png")) for a in args]
    extra = [] if command in ("info", "watermark decode") else [*DRY, "--outdir", tmp_path / "o"]
    with deadline(30):
        r = sdcli(*command.split(), *args, *extra)
    assert r.code == 2, r.err
    assert len(r.error_lines) == 1 and special in r.error_lines[0] and "Traceback" not in r.err
    for word in words:
        assert word in r.error_lines[0]


# --- configuration that would read the environment -----------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--prompt", "sign ${oc.env:HOME}"), ("--prompt", "price ${price}"),
                                        ("--prompt", "${5}"), ("--negative-prompt", "${oc.env:HOME}")])
def test_interpolation_syntax_in_text_stays_text_with_a_config(sdcli, tmp_path, monkeypatch, flag, value):
    monkeypatch.setenv("HOME", "/secret-home")
    config = _write(tmp_path, "c.yaml", "steps: 3\n")
    r = sdcli("txt2img", *DRY, "--config", config, flag, value, "--n_samples", 1, "--n_iter", 1,
              "--outdir", tmp_path / "o", "--set", "watermark_text=${oc.env:HOME}")
    assert r.code == 0, r.err
    assert "secret-home" not in r.out + r.err
    if flag == "--prompt":
        assert json.loads(r.out)["prompt"] == value


def test_an_outdir_with_interpolation_syntax_is_a_folder_of_that_name(sdcli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, "c.yaml", "outdir: out-${oc.env:USER}\n")
    r = sdcli("txt2img", "--model", "tiny", "--device", "cpu", "--config", config, "--dry-run")
    assert r.code == 0 and "out-${oc.env:USER}" in r.err, r.err
