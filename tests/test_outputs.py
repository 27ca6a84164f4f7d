"""Unit tests for sdcli.outputs: numbered atomic writes, A1111 metadata, grids, PNG chunks, manifest, outdir.

Pure: no torch, no diffusers, no model (PIL only). Every file lives under tmp_path.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from sdcli import manifest, outputs, records
from sdcli.errors import UsageError
from sdcli.manifest import MANIFEST
from sdcli.outputs import GRID_RE, SAMPLE_RE, TMP_PREFIX

SAMPLE_FMT = "{:05d}.png"
GRID_FMT = "grid-{:04d}.png"


def leftovers(folder: Path) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith(TMP_PREFIX)]


# --- write_numbered --------------------------------------------------------------------------------------


def test_first_sample_is_00000(tmp_path):
    path = outputs.write_numbered(tmp_path, b"data", SAMPLE_RE, SAMPLE_FMT)
    assert path == tmp_path / "00000.png"
    assert path.read_bytes() == b"data"
    assert leftovers(tmp_path) == []


def test_numbering_continues_and_never_overwrites(tmp_path):
    old = {f"{n:05d}.png": f"old {n}".encode() for n in range(3)}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    path = outputs.write_numbered(tmp_path, b"new", SAMPLE_RE, SAMPLE_FMT)
    assert path.name == "00003.png" and path.read_bytes() == b"new"
    assert {name: (tmp_path / name).read_bytes() for name in old} == old
    assert sorted(os.listdir(tmp_path)) == ["00000.png", "00001.png", "00002.png", "00003.png"]


def test_numbering_with_a_gap_overwrites_nothing(tmp_path):
    (tmp_path / "00000.png").write_bytes(b"zero")
    (tmp_path / "00007.png").write_bytes(b"seven")
    path = outputs.write_numbered(tmp_path, b"new", SAMPLE_RE, SAMPLE_FMT)
    assert path.name not in ("00000.png", "00007.png")
    assert SAMPLE_RE.match(path.name)
    assert (tmp_path / "00000.png").read_bytes() == b"zero" and (tmp_path / "00007.png").read_bytes() == b"seven"


def test_numbering_ignores_other_files(tmp_path):
    for name in ("notes.png", "00001.gif", "00002-depth.png", "grid-0003.png", "123.png", ".tmp-abc.png", "manifest.jsonl"):
        (tmp_path / name).write_bytes(b"x")
    assert outputs.write_numbered(tmp_path, b"new", SAMPLE_RE, SAMPLE_FMT).name == "00000.png"


def test_grids_number_on_their_own(tmp_path):
    (tmp_path / "grid-0000.png").write_bytes(b"old grid")
    (tmp_path / "00009.png").write_bytes(b"not a grid")
    path = outputs.write_numbered(tmp_path, b"grid", GRID_RE, GRID_FMT)
    assert path.name == "grid-0001.png"
    assert (tmp_path / "grid-0000.png").read_bytes() == b"old grid"


def test_numbers_past_99999_keep_counting(tmp_path):
    (tmp_path / "99999.png").write_bytes(b"x")
    assert outputs.write_numbered(tmp_path, b"y", SAMPLE_RE, SAMPLE_FMT).name == "100000.png"
    assert outputs.write_numbered(tmp_path, b"z", SAMPLE_RE, SAMPLE_FMT).name == "100001.png"


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "link", no_link)
    with pytest.raises(OSError):
        outputs.write_numbered(tmp_path, b"data", SAMPLE_RE, SAMPLE_FMT)
    assert os.listdir(tmp_path) == []


def _writer(folder: str, tag: str, count: int, barrier) -> None:
    barrier.wait()
    for i in range(count):
        outputs.write_numbered(Path(folder), f"{tag}-{i}".encode(), SAMPLE_RE, SAMPLE_FMT)


def _check_concurrent_result(folder: Path, tags: list[str], count: int) -> None:
    names = sorted(os.listdir(folder))
    assert leftovers(folder) == []
    assert len(names) == len(tags) * count
    assert all(SAMPLE_RE.match(n) for n in names)
    contents = sorted((folder / n).read_bytes() for n in names)
    assert contents == sorted(f"{t}-{i}".encode() for t in tags for i in range(count))  # nothing overwritten


def test_concurrent_processes_never_collide(tmp_path):
    ctx = multiprocessing.get_context("fork")
    tags, count = ["p0", "p1", "p2", "p3"], 20
    barrier = ctx.Barrier(len(tags))
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), t, count, barrier)) for t in tags]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * len(tags)
    _check_concurrent_result(tmp_path, tags, count)


def test_concurrent_threads_never_collide(tmp_path):
    tags, count = ["t0", "t1", "t2", "t3"], 20
    barrier = threading.Barrier(len(tags))
    errors = []

    def run(tag):
        try:
            _writer(str(tmp_path), tag, count, barrier)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in tags]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    _check_concurrent_result(tmp_path, tags, count)


# --- A1111 parameters ------------------------------------------------------------------------------------

PARAMS = {"Steps": 20, "Sampler": "DDIM", "CFG scale": 7.5, "Seed": 42, "Size": "512x512", "Model": "sd15"}


def test_a1111_layout():
    text = records.a1111_parameters("a cat", "blurry", {**PARAMS, "Eta": None})
    assert text.split("\n") == [
        "a cat",
        "Negative prompt: blurry",
        "Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15",
    ]


def test_a1111_without_negative_prompt_has_no_negative_line():
    text = records.a1111_parameters("a cat", "", PARAMS)
    assert text.split("\n")[0] == "a cat"
    assert len(text.split("\n")) == 2 and "Negative prompt" not in text


def test_a1111_round_trip_with_commas_colons_and_quotes():
    prompt = "a cat, oil painting: detailed, (masterpiece:1.2)"
    negative = "blurry, lowres: bad"
    params = {**PARAMS, "Model": "org/model, v2: final", "Note": 'say "hi", then: bye',
              "Path": "C:\\models\\x.safetensors", "Version": "sdcli 0.1.0"}
    text = records.a1111_parameters(prompt, negative, params)
    last = text.split("\n")[-1]
    assert 'Model: "org/model, v2: final"' in last  # a value with commas or colons is quoted
    parsed = records.parse_a1111(text)
    assert parsed["prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert {k: parsed[k] for k in params} == {k: str(v) for k, v in params.items()}


def test_a1111_round_trip_multi_line_prompt_and_unicode():
    text = records.a1111_parameters("line one,\nline two \u732b", "neg one\nneg two", PARAMS)
    parsed = records.parse_a1111(text)
    assert parsed["prompt"] == "line one,\nline two \u732b"
    assert parsed["Negative prompt"] == "neg one\nneg two"
    assert parsed["Seed"] == "42"


def test_a1111_rule_needs_three_pairs_on_the_last_line():
    two = "a cat\nSteps: 20, Seed: 1"
    assert records.parse_a1111(two) == {"prompt": two}
    three = records.parse_a1111("a cat\nSteps: 20, Seed: 1, Size: 64x64")
    assert (three["prompt"], three["Steps"], three["Seed"], three["Size"]) == ("a cat", "20", "1", "64x64")
    assert three["Negative prompt"] == ""


def test_a1111_text_without_parameters_is_all_prompt():
    assert records.parse_a1111("just a prompt, with: a colon") == {"prompt": "just a prompt, with: a colon"}


# --- grids -----------------------------------------------------------------------------------------------

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def tiles(n: int, size=(64, 64)):
    return [Image.new("RGB", size, COLORS[i]) for i in range(n)]


def test_grid_size_five_images_two_per_row():
    grid = outputs.make_grid(tiles(5), 2, padding=2)
    assert grid.size == (2 * 66 + 2, 3 * 66 + 2)


def test_grid_placement_and_black_padding():
    grid = outputs.make_grid(tiles(5), 2, padding=2)
    for i in range(5):
        r, c = divmod(i, 2)
        x0, y0 = 2 + c * 66, 2 + r * 66
        for x, y in [(x0, y0), (x0 + 63, y0 + 63), (x0 + 32, y0 + 32)]:
            assert grid.getpixel((x, y)) == COLORS[i], (i, x, y)
    black = (0, 0, 0)
    assert grid.getpixel((0, 0)) == black and grid.getpixel((1, 1)) == black  # outer border
    assert grid.getpixel((66, 30)) == black and grid.getpixel((67, 30)) == black  # between columns
    assert grid.getpixel((30, 66)) == black  # between rows
    assert grid.getpixel((68 + 32, 134 + 32)) == black  # the empty cell after the last image


def test_grid_with_fewer_images_than_per_row():
    assert outputs.make_grid(tiles(3), 8, padding=2).size == (3 * 66 + 2, 66 + 2)


def test_grid_without_padding_and_non_square_images():
    grid = outputs.make_grid(tiles(4, size=(32, 16)), 2, padding=0)
    assert grid.size == (64, 32)
    assert [grid.getpixel(p) for p in [(0, 0), (32, 0), (0, 16), (63, 31)]] == COLORS[:4]


# --- PNG metadata ----------------------------------------------------------------------------------------


def test_encode_png_stores_parameters_and_sdcli_chunks(tmp_path):
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    parameters = records.a1111_parameters("a cat, \u732b", "blurry", PARAMS)
    record = {"prompt": "a cat, \u732b", "seed": 42, "steps": 20, "nested": {"a": [1, 2]}}
    data = outputs.encode_png(image, parameters, record)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (16, 8)
        assert im.convert("RGB").getpixel((3, 3)) == (10, 20, 30)
        assert im.text["parameters"] == parameters
        assert json.loads(im.text["sdcli"]) == record
    path = tmp_path / "x.png"
    path.write_bytes(data)
    text = outputs.read_metadata(str(path))
    assert text["parameters"] == parameters and json.loads(text["sdcli"]) == record


def test_encode_png_without_parameters_has_only_the_sdcli_chunk():
    data = outputs.encode_png(Image.new("RGB", (8, 8)), "", {"images": 4})
    with Image.open(io.BytesIO(data)) as im:
        assert "parameters" not in im.text
        assert json.loads(im.text["sdcli"]) == {"images": 4}


def test_read_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(UsageError, match="nope.png"):
        outputs.read_metadata(str(tmp_path / "nope.png"))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(UsageError, match="junk.png"):
        outputs.read_metadata(str(junk))


def test_sha256_of_bytes():
    assert outputs.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- manifest --------------------------------------------------------------------------------------------


def test_two_appends_give_both_records_as_complete_lines(tmp_path):
    first = [{"path": "samples/00000.png", "prompt": "a cat, \u732b", "seed": 1}]
    second = [{"path": "samples/00001.png", "seed": 2}, {"path": "samples/00002.png", "seed": 3}]
    manifest.append_manifest(tmp_path, first)
    manifest.append_manifest(tmp_path, second)
    assert manifest.read_manifest(tmp_path) == first + second
    raw = (tmp_path / MANIFEST).read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3
    assert [json.loads(line) for line in raw.decode("utf-8").split("\n")[:-1]] == first + second


def test_append_of_nothing_creates_no_manifest(tmp_path):
    manifest.append_manifest(tmp_path, [])
    assert not (tmp_path / MANIFEST).exists()
    assert manifest.read_manifest(tmp_path) == []


def test_read_manifest_skips_a_torn_last_line(tmp_path):
    (tmp_path / MANIFEST).write_text('{"seed": 1}\n{"seed": 2}\n{"seed": 3, "pro', encoding="utf-8")
    assert manifest.read_manifest(tmp_path) == [{"seed": 1}, {"seed": 2}]


def test_append_after_a_torn_line_keeps_the_new_record(tmp_path):
    (tmp_path / MANIFEST).write_text('{"seed": 1}\n{"seed": 2, "pro', encoding="utf-8")  # a killed run
    manifest.append_manifest(tmp_path, [{"seed": 3}])
    assert manifest.read_manifest(tmp_path) == [{"seed": 1}, {"seed": 3}]


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_manifest_keeps_prompts_with_unicode_line_separators(tmp_path, char):
    records = [{"prompt": f"a cat{char}a dog", "seed": 1}, {"prompt": "ok", "seed": 2}]
    manifest.append_manifest(tmp_path, records)
    assert manifest.read_manifest(tmp_path) == records


def test_read_manifest_skips_a_line_torn_inside_a_utf8_character(tmp_path):
    torn = '{"prompt": "\u732b'.encode("utf-8")[:-1]
    (tmp_path / MANIFEST).write_bytes(b'{"seed": 1}\n' + torn)
    assert manifest.read_manifest(tmp_path) == [{"seed": 1}]


# --- prepare_outdir --------------------------------------------------------------------------------------


def test_prepare_outdir_creates_folder_and_samples(tmp_path):
    out = tmp_path / "a" / "b"
    root = outputs.prepare_outdir(str(out))
    assert root == out and (out / "samples").is_dir()
    assert leftovers(out) == [] and leftovers(out / "samples") == []


def test_prepare_outdir_without_samples(tmp_path):
    out = tmp_path / "grid-only"
    outputs.prepare_outdir(str(out), need_samples=False)
    assert out.is_dir() and not (out / "samples").exists()


def test_prepare_outdir_keeps_existing_files(tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "00000.png").write_bytes(b"old")
    outputs.prepare_outdir(str(tmp_path))
    assert (tmp_path / "samples" / "00000.png").read_bytes() == b"old"


def test_outdir_that_is_a_file(tmp_path):
    target = tmp_path / "out"
    target.write_text("I am a file")
    with pytest.raises(UsageError, match="not a folder") as e:
        outputs.prepare_outdir(str(target))
    assert str(target) in str(e.value)
    assert target.read_text() == "I am a file"


@pytest.mark.parametrize("below", ["sub", "sub/deeper"])
def test_outdir_below_a_file(tmp_path, below):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / below
    with pytest.raises(UsageError, match="a part of the path is a file") as e:
        outputs.prepare_outdir(str(target))
    assert str(target) in str(e.value)


def test_samples_that_is_a_file(tmp_path):
    (tmp_path / "samples").write_text("x")
    with pytest.raises(UsageError, match="samples") as e:
        outputs.prepare_outdir(str(tmp_path))
    assert str(tmp_path) in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_outdir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UsageError, match="not writable") as e:
            outputs.prepare_outdir(str(ro))
        assert str(ro) in str(e.value)
    finally:
        ro.chmod(0o755)


def test_unwritable_outdir_is_a_usage_error_even_as_root(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs, "create_temp", denied)
    with pytest.raises(UsageError, match="not writable") as e:
        outputs.prepare_outdir(str(tmp_path / "out"))
    assert "Permission denied" in str(e.value)


def test_disk_error_message():
    assert "disk full" in outputs.disk_error(OSError(errno.ENOSPC, "No space"), Path("out"))
    assert outputs.disk_error(OSError(errno.EACCES, "denied"), Path("out")) is None
