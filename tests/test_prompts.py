"""Unit tests for sdcli.prompts: prompt files -> rows, rows -> jobs (counting, seeds, overrides) -> batches.

Pure: no torch, no diffusers, no model. Every file lives under tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sdcli import config, prompts
from sdcli.config import RunConfig
from sdcli.errors import UsageError
from sdcli.prompts import Row, batches, make_jobs, read_prompt_file
from sdcli.inputs import InputFile, StrengthInputs

ID = ("model", "txt2img")  # what make_jobs hashes into job ids besides the settings


def write(path: Path, content: str | bytes) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def from_file_cfg(**kwargs) -> RunConfig:
    """A validated config that reads its prompts from a file (make_jobs only looks at from_file's presence)."""
    return config.validate(RunConfig(from_file="prompts.txt", **kwargs))


# --- reading prompt files --------------------------------------------------------------------------------


def test_txt_skips_blank_lines_and_comments(tmp_path):
    f = write(tmp_path / "p.txt", "a cat\n\n# a comment\n   \n  a dog  \n   # indented comment\nbird\n")
    rows = read_prompt_file(f)
    assert [r.prompt for r in rows] == ["a cat", "a dog", "bird"]
    assert all(r.overrides == {} for r in rows)
    assert [r.source for r in rows] == [f"{f}:1", f"{f}:5", f"{f}:7"]


def test_txt_keeps_commas_and_strips_a_utf8_bom(tmp_path):
    f = write(tmp_path / "p.txt", "\ufeffa cat, oil painting, 4k\r\ncaf\xe9 \U0001F3A8\r\n".encode("utf-8"))
    assert [r.prompt for r in read_prompt_file(f)] == ["a cat, oil painting, 4k", "caf\xe9 \U0001F3A8"]


def test_unknown_suffix_is_read_as_text(tmp_path):
    f = write(tmp_path / "prompts.list", "one\ntwo\n")
    assert [r.prompt for r in read_prompt_file(f)] == ["one", "two"]


def test_jsonl_rows_with_per_row_fields(tmp_path):
    f = write(tmp_path / "p.jsonl", jsonl(
        {"prompt": "a cat", "negative_prompt": "blurry", "seed": 7, "steps": 20, "scale": 5.5, "W": 128, "H": 64},
        {"prompt": "a dog"},
    ) + "\n# comment\n" + jsonl({"prompt": "a bird", "width": 256, "height": 192, "scheduler": "plms"}))
    rows = read_prompt_file(f)
    assert [r.prompt for r in rows] == ["a cat", "a dog", "a bird"]
    assert rows[0].overrides == {"negative_prompt": "blurry", "seed": 7, "steps": 20, "scale": 5.5, "W": 128, "H": 64}
    assert rows[1].overrides == {}
    assert rows[2].overrides == {"W": 256, "H": 192, "scheduler": "pndm"}
    assert rows[2].source == f"{f}:5"


def test_jsonl_null_values_are_no_override(tmp_path):
    f = write(tmp_path / "p.jsonl", jsonl({"prompt": "a cat", "seed": None, "negative_prompt": None}))
    assert read_prompt_file(f)[0].overrides == {}


def test_yaml_list_of_strings_and_mappings(tmp_path):
    f = write(tmp_path / "p.yaml", "- a cat\n- prompt: a dog\n  seed: 3\n  width: 128\n- 'a bird, flying'\n")
    rows = read_prompt_file(f)
    assert [r.prompt for r in rows] == ["a cat", "a dog", "a bird, flying"]
    assert rows[1].overrides == {"seed": 3, "W": 128}


def test_yaml_prompts_key(tmp_path):
    f = write(tmp_path / "p.yml", "prompts:\n  - a cat\n  - prompt: a dog\n    steps: 12\n")
    rows = read_prompt_file(f)
    assert [(r.prompt, r.overrides) for r in rows] == [("a cat", {}), ("a dog", {"steps": 12})]


def test_csv_with_header(tmp_path):
    f = write(tmp_path / "p.csv", 'prompt,seed,W,negative_prompt\n"a cat, oil",5,128,ugly\na dog,,,\n')
    rows = read_prompt_file(f)
    assert [r.prompt for r in rows] == ["a cat, oil", "a dog"]
    assert rows[0].overrides == {"seed": 5, "W": 128, "negative_prompt": "ugly"}
    assert isinstance(rows[0].overrides["seed"], int)
    assert rows[1].overrides == {}  # empty cells are no override
    assert rows[1].source == f"{f}:3"


def test_extra_task_keys_are_allowed_when_the_task_asks(tmp_path):
    f = write(tmp_path / "p.jsonl", jsonl({"prompt": "a cat", "strength": 0.5}))
    with pytest.raises(UsageError, match="strength"):
        read_prompt_file(f)
    assert read_prompt_file(f, frozenset({"strength"}))[0].overrides == {"strength": 0.5}


@pytest.mark.parametrize("name, content, words", [
    ("empty.txt", b"", ["no prompts"]),
    ("comments.txt", b"# one\n\n   # two\n\n", ["no prompts"]),
    ("empty.jsonl", b"\n\n", ["no prompts"]),
    ("empty.yaml", b"", ["no prompts"]),
    ("nul.txt", b"a cat\n\x00\x01\x02\n", ["NUL"]),
    ("latin1.txt", "a cat\ncaf\xe9\n".encode("latin-1"), ["UTF-8", "line 2"]),
    ("bad.jsonl", b'{"prompt": "a cat"}\n{"prompt": \n', [":2", "invalid JSON"]),
    ("notobject.jsonl", b'{"prompt": "a cat"}\n[1, 2]\n', [":2"]),
    ("typo.jsonl", b'{"prompt": "a cat", "negative_promt": "x"}\n', [":1", "'negative_promt'",
                                                                       "did you mean 'negative_prompt'"]),
    ("noprompt.jsonl", b'{"prompt": "a"}\n{"seed": 1}\n', [":2", "prompt"]),
    ("blankprompt.jsonl", b'{"prompt": "   "}\n', [":1", "prompt"]),
    ("width.jsonl", b'{"prompt": "a"}\n{"prompt": "b", "W": 100}\n', [":2", "W 100", "multiple of 8"]),
    ("height.csv", b"prompt,height\na,512\nb,513\n", [":3", "H 513", "multiple of 8"]),
    ("seed.jsonl", b'{"prompt": "a", "seed": "abc"}\n', [":1", "seed", "integer"]),
    ("seedfloat.jsonl", b'{"prompt": "a", "seed": 1.5}\n', [":1", "seed", "integer"]),
    ("seedbool.jsonl", b'{"prompt": "a", "seed": true}\n', [":1", "seed"]),
    ("seedcsv.csv", b"prompt,seed\na,1\nb,x7\n", [":3", "seed", "integer"]),
    ("steps.jsonl", b'{"prompt": "a", "steps": 0}\n', [":1", "steps"]),
    ("sched.jsonl", b'{"prompt": "a", "scheduler": "eulr"}\n', [":1", "scheduler", "did you mean 'euler'"]),
    ("nocolumn.csv", b"text,seed\na cat,1\n", ["'prompt' column"]),
    ("extra.csv", b"prompt\na,b\n", [":2"]),
    ("bad.yaml", b"- a\n- [b\n", ["invalid YAML"]),
    ("scalar.yaml", b"just a string\n", ["list"]),
    ("item.yaml", b"- a cat\n- 12\n", ["item 2"]),
])
def test_bad_prompt_file_names_the_file_and_line(tmp_path, name, content, words):
    f = write(tmp_path / name, content)
    with pytest.raises(UsageError) as e:
        read_prompt_file(f)
    msg = str(e.value)
    assert f in msg
    for word in words:
        assert word in msg


def test_missing_prompt_file(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match="no such file") as e:
        read_prompt_file(missing)
    assert missing in str(e.value)


def test_folder_is_not_a_prompt_file(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        read_prompt_file(str(tmp_path))


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_jsonl_prompt_may_contain_unicode_line_separators(tmp_path, char):
    record = {"prompt": f"a cat{char}a dog", "seed": 1}
    f = write(tmp_path / "p.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
    rows = read_prompt_file(f)
    assert [(r.prompt, r.overrides) for r in rows] == [(record["prompt"], {"seed": 1})]


def test_csv_error_names_the_real_line_after_a_blank_line(tmp_path):
    f = write(tmp_path / "p.csv", "prompt,W\na,64\n\nb,100\n")  # the bad row is on line 4
    with pytest.raises(UsageError, match=r"p\.csv:4:"):
        read_prompt_file(f)


# --- rows_for --------------------------------------------------------------------------------------------


def test_rows_for_prompt_default_and_file(tmp_path):
    assert [r.prompt for r in prompts.rows_for(RunConfig(prompt="a cat"))] == ["a cat"]
    assert [r.prompt for r in prompts.rows_for(RunConfig())] == [prompts.DEFAULT_PROMPT]
    f = write(tmp_path / "p.txt", "x\ny\n")
    assert [r.prompt for r in prompts.rows_for(RunConfig(from_file=f))] == ["x", "y"]


def test_rows_for_empty_prompt_is_an_error():
    with pytest.raises(UsageError, match="--prompt"):
        prompts.rows_for(RunConfig(prompt="   "))


# --- make_jobs: counting and seeds -----------------------------------------------------------------------


def test_prompt_makes_n_iter_times_n_samples_jobs_with_consecutive_seeds():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=3, n_iter=2, seed=100))
    jobs = make_jobs(cfg, prompts.rows_for(cfg), *ID)
    assert len(jobs) == 6
    assert [j.index for j in jobs] == list(range(6))
    assert [j.seed for j in jobs] == [100, 101, 102, 103, 104, 105]
    assert [j.iteration for j in jobs] == [0, 0, 0, 1, 1, 1]
    assert {j.prompt for j in jobs} == {"a cat"}
    assert {(j.steps, j.scale, j.negative_prompt) for j in jobs} == {(cfg.steps, cfg.scale, cfg.negative_prompt)}


def test_fixed_code_gives_image_i_of_every_batch_the_same_seed():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=3, n_iter=3, seed=100, fixed_code=True))
    jobs = make_jobs(cfg, prompts.rows_for(cfg), *ID)
    assert [j.seed for j in jobs] == [100, 101, 102] * 3
    for batch in batches(jobs, cfg.n_samples):
        assert [j.seed for j in batch] == [100 + i for i in range(len(batch))]


def test_fixed_code_with_a_prompt_file():
    cfg = from_file_cfg(n_samples=2, n_iter=2, seed=10, fixed_code=True)
    rows = [Row("a"), Row("b"), Row("c")]
    jobs = make_jobs(cfg, rows, *ID)
    for batch in batches(jobs, cfg.n_samples):
        assert [j.seed for j in batch] == [10 + i for i in range(len(batch))]


def test_from_file_rows_times_repeat_times_n_iter():
    cfg = from_file_cfg(n_samples=4, n_iter=2, repeat=2, seed=100)
    jobs = make_jobs(cfg, [Row("a"), Row("b"), Row("c")], *ID)
    assert len(jobs) == 3 * 2 * 2
    assert [j.prompt for j in jobs] == ["a", "a", "b", "b", "c", "c"] * 2
    assert [j.iteration for j in jobs] == [0] * 6 + [1] * 6
    assert [j.seed for j in jobs] == list(range(100, 112))
    assert [j.index for j in jobs] == list(range(12))


def test_from_file_one_image_per_row_regardless_of_n_samples():
    cfg = from_file_cfg(n_samples=3, n_iter=1)
    jobs = make_jobs(cfg, [Row("a"), Row("b")], *ID)
    assert [j.prompt for j in jobs] == ["a", "b"]


def test_row_seed_is_used_for_its_first_image_and_counts_up_for_repeats():
    cfg = from_file_cfg(n_samples=4, n_iter=2, repeat=2, seed=100)
    jobs = make_jobs(cfg, [Row("a"), Row("b", {"seed": 500}), Row("c")], *ID)
    first = [j for j in jobs if j.prompt == "b" and j.iteration == 0]
    assert [j.seed for j in first] == [500, 501]
    second = [j for j in jobs if j.prompt == "b" and j.iteration == 1]
    assert len(second) == 2 and not {j.seed for j in second} & {500, 501}  # a new iteration, new images
    # the other rows keep seed + k
    assert [(j.index, j.seed) for j in jobs if j.prompt != "b"] == [(k, 100 + k) for k in (0, 1, 4, 5, 6, 7, 10, 11)]


def test_row_seed_wins_over_fixed_code():
    cfg = from_file_cfg(n_samples=2, n_iter=1, repeat=1, seed=100, fixed_code=True)
    jobs = make_jobs(cfg, [Row("a"), Row("b", {"seed": 7})], *ID)
    assert [j.seed for j in jobs] == [100, 7]


def test_row_overrides_apply_to_that_row_only():
    cfg = from_file_cfg(n_samples=4, n_iter=1, steps=30, scale=7.0, W=64, H=64, negative_prompt="base neg",
                        scheduler="euler")
    rows = [Row("a"), Row("b", {"steps": 20, "scale": 3.0, "W": 128, "negative_prompt": "ugly",
                                "scheduler": "ddim", "eta": 0.5}), Row("c")]
    a, b, c = make_jobs(cfg, rows, *ID)
    for job in (a, c):  # euler ignores eta: recorded as None
        assert (job.steps, job.scale, job.W, job.H, job.negative_prompt, job.scheduler, job.eta) == \
            (30, 7.0, 64, 64, "base neg", "euler", None)
    assert (b.steps, b.scale, b.W, b.H, b.negative_prompt, b.scheduler, b.eta) == \
        (20, 3.0, 128, 64, "ugly", "ddim", 0.5)


def test_jobs_from_a_jsonl_file_end_to_end(tmp_path):
    f = write(tmp_path / "p.jsonl", jsonl({"prompt": "a", "width": 128}, {"prompt": "b", "seed": 9}))
    cfg = config.load("txt2img", flags={"from_file": f, "n_samples": 2, "n_iter": 1, "seed": 1, "W": 64})
    jobs = make_jobs(cfg, prompts.rows_for(cfg), *ID)
    assert [(j.prompt, j.W, j.seed) for j in jobs] == [("a", 128, 1), ("b", 64, 9)]
    assert jobs[0].source == f"{f}:1"


def test_each_rows_inputs_reach_its_jobs_and_their_ids():
    cfg = from_file_cfg(n_samples=2, n_iter=1)
    one = StrengthInputs(InputFile("init.png", "aa"), "crop", 0.3)
    two = StrengthInputs(InputFile("init.png", "aa"), "crop", 0.75)
    a, b = make_jobs(cfg, [Row("a", inputs=one), Row("a", inputs=two)], *ID)
    assert (a.inputs, b.inputs) == (one, two) and (a.strength, b.strength) == (0.3, 0.75)
    assert a.settings()["inputs"] == {"image": "init.png", "image_sha256": "aa", "resize_mode": "crop", "strength": 0.3}
    assert a.id != b.id and len(batches([a, b], 2)) == 2  # different inputs: different work, different batches


# --- batches ---------------------------------------------------------------------------------------------


def flat(groups):
    return [j for g in groups for j in g]


def test_prompt_batches_are_n_samples_each():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=3, n_iter=2))
    jobs = make_jobs(cfg, prompts.rows_for(cfg), *ID)
    groups = batches(jobs, cfg.n_samples)
    assert [len(g) for g in groups] == [3, 3]
    assert flat(groups) == jobs


def test_from_file_batches_never_mix_iterations():
    cfg = from_file_cfg(n_samples=2, n_iter=2)
    jobs = make_jobs(cfg, [Row(p) for p in "abcde"], *ID)
    groups = batches(jobs, cfg.n_samples)
    assert [len(g) for g in groups] == [2, 2, 1, 2, 2, 1]
    assert all(len({j.iteration for j in g}) == 1 for g in groups)
    assert flat(groups) == jobs


def test_batches_split_where_settings_differ():
    cfg = from_file_cfg(n_samples=4, n_iter=1)
    jobs = make_jobs(cfg, [Row("a"), Row("b", {"steps": 20}), Row("c"), Row("d"), Row("e", {"W": 128})], *ID)
    groups = batches(jobs, cfg.n_samples)
    assert [[j.prompt for j in g] for g in groups] == [["a"], ["b"], ["c", "d"], ["e"]]


def test_different_seeds_and_negative_prompts_share_a_batch():
    cfg = from_file_cfg(n_samples=4, n_iter=1)
    jobs = make_jobs(cfg, [Row("a", {"seed": 3}), Row("b", {"negative_prompt": "x"}), Row("c")], *ID)
    assert [len(g) for g in batches(jobs, cfg.n_samples)] == [3]


@pytest.mark.parametrize("n_samples, n_iter, repeat, n_rows", [(1, 1, 1, 3), (3, 2, 1, 7), (4, 3, 3, 5), (64, 1, 2, 40)])
def test_batches_hold_at_most_n_samples_and_keep_order(n_samples, n_iter, repeat, n_rows):
    cfg = from_file_cfg(n_samples=n_samples, n_iter=n_iter, repeat=repeat)
    rows = [Row(f"p{i}", {"steps": 10} if i % 4 == 3 else {}) for i in range(n_rows)]
    jobs = make_jobs(cfg, rows, *ID)
    assert len(jobs) == n_rows * repeat * n_iter
    groups = batches(jobs, n_samples)
    assert all(1 <= len(g) <= n_samples for g in groups)
    assert all(len({j.batch_key() for j in g}) == 1 for g in groups)
    assert flat(groups) == jobs


# --- job ids ---------------------------------------------------------------------------------------------


def test_job_id_is_stable():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=2, n_iter=2, seed=5))
    one = [j.job_id("m", "txt2img") for j in make_jobs(cfg, prompts.rows_for(cfg), *ID)]
    two = [j.job_id("m", "txt2img") for j in make_jobs(cfg, prompts.rows_for(cfg), *ID)]
    assert one == two
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in one)
    assert len(set(one)) == 4  # every image of a run has its own id


def test_job_ids_are_those_of_sdcli_0_1():
    """--resume finds the work of an outdir written by sdcli 0.1: the same settings give the same ids
    (the expected values were computed by 0.1's Job.job_id, where task inputs were a flat dict)."""
    from sdcli.prompts import Job
    from sdcli.inputs import MaskInputs

    kw = dict(index=3, prompt="a cat", negative_prompt="ugly", seed=45, steps=50, scale=7.5, W=64, H=None,
              scheduler="ddim", eta=0.0, iteration=1)
    image = InputFile("in.png", "ab")
    assert Job(**kw).job_id("m", "txt2img") == "b091dc2bae04f691"
    assert Job(**kw, inputs=StrengthInputs(image, "crop", 0.5)).job_id("m", "img2img") == "fa086a53c7d7812a"
    inpaint = MaskInputs(image, "crop", 1.0, InputFile("m.png", "cd"))
    assert Job(**kw, inputs=inpaint).job_id("m", "inpaint") == "a3b77be75099a59b"


def test_job_id_ignores_the_source_location():
    cfg = from_file_cfg(n_samples=1, n_iter=1)
    job = make_jobs(cfg, [Row("a", source="x.txt:1")], *ID)[0]
    assert dataclasses.replace(job, source="y.txt:9").job_id("m", "t") == job.job_id("m", "t")


def test_fixed_code_images_with_equal_seeds_still_have_distinct_ids():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=2, n_iter=2, fixed_code=True))
    jobs = make_jobs(cfg, prompts.rows_for(cfg), *ID)
    assert len({j.seed for j in jobs}) == 2
    assert len({j.job_id("m", "txt2img") for j in jobs}) == 4


@pytest.mark.parametrize("change", [{"prompt": "a dog"}, {"seed": 43}, {"index": 1}, {"steps": 49},
                                    {"negative_prompt": "ugly"}, {"W": 128},
                                    {"inputs": StrengthInputs(InputFile("a.png", "aa"), "crop", 0.5)}])
def test_job_id_changes_with_what_makes_the_image(change):
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=1, n_iter=1, seed=42))
    job = make_jobs(cfg, prompts.rows_for(cfg), *ID)[0]
    assert dataclasses.replace(job, **change).job_id("m", "txt2img") != job.job_id("m", "txt2img")


def test_job_id_changes_with_model_and_task():
    cfg = config.validate(RunConfig(prompt="a cat", n_samples=1, n_iter=1))
    job = make_jobs(cfg, prompts.rows_for(cfg), *ID)[0]
    base = job.job_id("m", "txt2img")
    assert job.job_id("other", "txt2img") != base
    assert job.job_id("m", "img2img") != base
