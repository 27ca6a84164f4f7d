"""Unit tests for sdcli.config: precedence, unknown keys, types, presets, LDM configs, validation, YAML dump.

Pure: no torch, no diffusers, no model. Every file lives under tmp_path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sdcli import config, configfiles
from sdcli.config import RunConfig
from sdcli.limits import MAX_BATCH
from sdcli.errors import UsageError


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in an empty folder with an empty presets folder, so no real preset or file can leak in."""
    work = tmp_path / "cwd"
    work.mkdir()
    presets = tmp_path / "presets"
    presets.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(configfiles, "presets_dir", lambda: presets)
    return presets


@pytest.fixture
def presets(_isolated) -> Path:
    return _isolated


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(**kwargs) -> RunConfig:
    return config.load("txt2img", **kwargs)


# --- precedence ------------------------------------------------------------------------------------------


def test_defaults_come_from_the_schema():
    cfg = load()
    assert cfg == config.validate(RunConfig(task="txt2img"))
    assert (cfg.steps, cfg.scale, cfg.n_samples, cfg.n_iter, cfg.seed) == (50, 7.5, 3, 2, 42)


def test_precedence_defaults_yaml_set_flags(tmp_path):
    a = write(tmp_path / "a.yaml", "steps: 10\nscale: 3.0\nseed: 1\nn_iter: 5\n")
    b = write(tmp_path / "b.yaml", "steps: 20\nscale: 4.0\nseed: 2\n")
    cfg = load(config_files=[a, b], sets=["steps=30", "scale=5.0"], flags={"steps": 40})
    assert cfg.steps == 40  # flag beats --set, YAML and default
    assert cfg.scale == 5.0  # --set beats both YAML files
    assert cfg.seed == 2  # the later YAML file wins
    assert cfg.n_iter == 5  # a key only the first YAML sets survives
    assert cfg.n_samples == 3  # untouched keys keep their defaults


def test_later_yaml_file_wins(tmp_path):
    a = write(tmp_path / "a.yaml", "steps: 10\n")
    b = write(tmp_path / "b.yaml", "steps: 20\n")
    assert load(config_files=[a, b]).steps == 20
    assert load(config_files=[b, a]).steps == 10


def test_later_set_wins():
    assert load(sets=["steps=11", "steps=12"]).steps == 12


def test_flags_with_none_value_are_ignored(tmp_path):
    a = write(tmp_path / "a.yaml", "seed: 7\nH: 256\n")
    cfg = load(config_files=[a], sets=["scale=3"], flags={"seed": None, "H": None, "scale": None, "W": 128})
    assert (cfg.seed, cfg.H, cfg.scale, cfg.W) == (7, 256, 3.0, 128)


def test_set_values_are_typed():
    cfg = load(sets=["steps=12", "scale=6", "fixed_code=true", "H=512", "prompt=a cat, oil painting"])
    assert cfg.steps == 12 and isinstance(cfg.steps, int)
    assert cfg.scale == 6.0 and isinstance(cfg.scale, float)
    assert cfg.fixed_code is True
    assert cfg.H == 512
    assert cfg.prompt == "a cat, oil painting"


def test_empty_yaml_file_changes_nothing(tmp_path):
    empty = write(tmp_path / "empty.yaml", "")
    assert load(config_files=[empty]) == load()


def test_task_key_equal_to_the_subcommand_is_accepted(tmp_path):
    f = write(tmp_path / "t.yaml", "task: txt2img\nsteps: 9\n")
    assert load(config_files=[f]).steps == 9


def test_task_key_for_another_subcommand_is_an_error(tmp_path):
    f = write(tmp_path / "t.yaml", "task: img2img\n")
    with pytest.raises(UsageError, match="img2img"):
        load(config_files=[f])


# --- unknown keys and wrong types ------------------------------------------------------------------------


def _setting(tmp_path, where: str, key: str, value: str) -> dict:
    """load() arguments that set ``key`` to the YAML text ``value`` from a config file, --set or a flag."""
    if where == "yaml":
        return {"config_files": [write(tmp_path / "c.yaml", f"{key}: {value}\n")]}
    if where == "set":
        return {"sets": [f"{key}={value}"]}
    return {"flags": {key: yaml.safe_load(value)}}


@pytest.mark.parametrize("where", ["yaml", "set", "flags"])
@pytest.mark.parametrize("key, close", [("step", "steps"), ("n_sample", "n_samples"),
                                        ("negative-prompt", "negative_prompt"), ("sheduler", "scheduler")])
def test_unknown_key_names_it_and_suggests_a_close_one(tmp_path, where, key, close):
    with pytest.raises(UsageError) as e:
        load(**_setting(tmp_path, where, key, "3"))
    assert f"'{key}'" in str(e.value)
    assert f"did you mean '{close}'" in str(e.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    f = write(tmp_path / "c.yaml", "step: 3\n")
    with pytest.raises(UsageError, match="c.yaml"):
        load(config_files=[f])


def test_unknown_key_far_from_any_gets_no_suggestion():
    with pytest.raises(UsageError) as e:
        load(sets=["zzzzqqq=1"])
    assert "'zzzzqqq'" in str(e.value) and "did you mean" not in str(e.value)


@pytest.mark.parametrize("where", ["yaml", "set", "flags"])
@pytest.mark.parametrize("key, value", [("steps", "abc"), ("scale", "high"), ("n_samples", "[1, 2]"),
                                        ("fixed_code", "maybe")])
def test_wrong_type_names_the_key(tmp_path, where, key, value):
    with pytest.raises(UsageError) as e:
        load(**_setting(tmp_path, where, key, value))
    assert f"'{key}'" in str(e.value)


def test_wrong_type_in_yaml_names_the_file(tmp_path):
    f = write(tmp_path / "bad-type.yaml", "steps: abc\n")
    with pytest.raises(UsageError, match="bad-type.yaml"):
        load(config_files=[f])


def test_set_without_equals_sign_is_an_error():
    with pytest.raises(UsageError, match="key=value"):
        load(sets=["steps"])


@pytest.mark.parametrize("key, text", [("prompt", "yes"), ("prompt", "#1 best cat"), ("prompt", "a cat #2"),
                                       ("prompt", "portrait: a cat"), ("watermark_text", "0123"),
                                       ("negative_prompt", "")])
def test_set_keeps_text_settings_verbatim(key, text):
    cfg = load(sets=[f"{key}={text}"])
    assert getattr(cfg, key) == text


# --- bad files -------------------------------------------------------------------------------------------


def test_missing_config_file_names_it(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="nope.yaml") as e:
        load(config_files=[missing])
    assert "no such file" in str(e.value)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    f = write(tmp_path / "broken.yaml", "steps: 10\nscale: [1, 2\n")
    with pytest.raises(UsageError) as e:
        load(config_files=[f])
    assert "broken.yaml" in str(e.value) and "invalid YAML" in str(e.value)
    assert "line" in str(e.value)


def test_non_utf8_config_names_the_file(tmp_path):
    f = tmp_path / "latin1.yaml"
    f.write_bytes("prompt: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="latin1.yaml") as e:
        load(config_files=[str(f)])
    assert "UTF-8" in str(e.value)


def test_yaml_that_is_not_a_mapping_is_an_error(tmp_path):
    f = write(tmp_path / "list.yaml", "- steps\n- 10\n")
    with pytest.raises(UsageError, match="list.yaml"):
        load(config_files=[f])


# --- presets ---------------------------------------------------------------------------------------------


def test_preset_name_resolves_to_presets_folder(presets):
    write(presets / "mypreset.yaml", "steps: 17\nmodel: some/model\n")
    assert configfiles.find_config("mypreset") == str(presets / "mypreset.yaml")
    cfg = load(config_files=["mypreset"])
    assert (cfg.steps, cfg.model) == (17, "some/model")


def test_explicit_path_is_used_as_is(tmp_path, presets):
    write(presets / "p.yaml", "steps: 1\n")
    own = write(tmp_path / "p.yaml", "steps: 2\n")
    assert configfiles.find_config(own) == own
    assert load(config_files=[own]).steps == 2


def test_unknown_preset_suggests_a_close_one_and_lists_presets(presets):
    write(presets / "sd15.yaml", "steps: 1\n")
    write(presets / "sd21-base.yaml", "steps: 1\n")
    with pytest.raises(UsageError) as e:
        load(config_files=["sd16"])
    msg = str(e.value)
    assert "sd16" in msg and "did you mean 'sd15'" in msg and "sd21-base" in msg


def test_preset_then_file_then_flags(tmp_path, presets):
    write(presets / "base.yaml", "steps: 5\nscale: 2.0\nH: 256\n")
    mine = write(tmp_path / "mine.yaml", "scale: 3.0\n")
    cfg = load(config_files=["base", mine], flags={"H": 128})
    assert (cfg.steps, cfg.scale, cfg.H) == (5, 3.0, 128)


# --- original LDM inference configs ----------------------------------------------------------------------

LDM_YAML = """\
model:
  base_learning_rate: 1.0e-04
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    image_size: 64
    channels: 4
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        model_channels: 320
"""


def test_ldm_config_becomes_model_config_and_is_not_merged(tmp_path):
    ldm = write(tmp_path / "v1-inference.yaml", LDM_YAML)
    cfg = load(config_files=[ldm])
    assert cfg.model_config == ldm
    assert cfg.model is None  # its 'model' mapping was not merged into the 'model' setting
    assert dataclasses.replace(cfg, model_config=None) == load()


def test_ldm_config_next_to_a_run_config(tmp_path):
    ldm = write(tmp_path / "v1-inference.yaml", LDM_YAML)
    run = write(tmp_path / "run.yaml", "steps: 12\nmodel: ckpt.safetensors\n")
    cfg = load(config_files=[run, ldm])
    assert (cfg.model_config, cfg.steps, cfg.model) == (ldm, 12, "ckpt.safetensors")


def test_explicit_model_config_flag_beats_ldm_yaml(tmp_path):
    ldm = write(tmp_path / "v1-inference.yaml", LDM_YAML)
    assert load(config_files=[ldm], flags={"model_config": "my-folder"}).model_config == "my-folder"


def test_run_config_with_a_model_string_is_merged_normally(tmp_path):
    f = write(tmp_path / "run.yaml", "model: org/name\n")
    cfg = load(config_files=[f])
    assert (cfg.model, cfg.model_config) == ("org/name", None)


# --- validate --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes, words", [
    ({"H": 100}, ["--H 100", "multiple of 8"]),
    ({"W": 500}, ["--W 500", "multiple of 8"]),
    ({"H": 0}, ["--H 0"]),
    ({"W": 8192}, ["--W 8192"]),
    ({"steps": 0}, ["--steps 0"]),
    ({"n_samples": 0}, ["--n_samples 0"]),
    ({"n_samples": MAX_BATCH + 1}, [f"--n_samples {MAX_BATCH + 1}"]),
    ({"n_iter": 0}, ["--n_iter 0"]),
    ({"eta": 1.5}, ["--eta 1.5"]),
    ({"eta": -0.1}, ["--eta -0.1"]),
    ({"scale": -1.0}, ["--scale -1.0"]),
    ({"seed": -1}, ["--seed -1"]),
    ({"repeat": 0}, ["--repeat 0"]),
    ({"scheduler": "ddin"}, ["--scheduler ddin", "did you mean 'ddim'"]),
    ({"scheduler": "eulr-a"}, ["--scheduler eulr-a", "did you mean 'euler-a'"]),
    ({"precision": "fp8"}, ["--precision fp8"]),
    ({"device": "gpu"}, ["--device gpu"]),
    ({"device": "cuda:x"}, ["--device cuda:x"]),
    ({"prompt": "a cat", "from_file": "prompts.txt"}, ["--prompt", "--from-file"]),
    ({"watermark_text": ""}, ["--watermark-text"]),
])
def test_validate_rejects(changes, words):
    with pytest.raises(UsageError) as e:
        config.validate(RunConfig(**changes))
    for word in words:
        assert word in str(e.value)


@pytest.mark.parametrize("changes", [{"H": 8}, {"W": 4096}, {"n_samples": MAX_BATCH}, {"n_samples": 1},
                                     {"eta": 1.0}, {"eta": 0.0}, {"steps": 1}, {"scheduler": "model"},
                                     {"device": "cuda:1"}, {"device": "mps"}, {"device": "cpu"},
                                     {"watermark": False, "watermark_text": ""}])
def test_validate_accepts_boundaries(changes):
    cfg = config.validate(RunConfig(**changes))
    for key, value in changes.items():
        assert getattr(cfg, key) == value


@pytest.mark.parametrize("field, given, normal", [
    ("scheduler", "plms", "pndm"), ("scheduler", "PLMS", "pndm"), ("scheduler", "DDIM", "ddim"),
    ("scheduler", "euler_a", "euler-a"),
    ("precision", "autocast", "auto"), ("precision", "full", "fp32"), ("precision", "half", "fp16"),
    ("precision", "FP16", "fp16"), ("precision", "bfloat16", "bf16"),
    ("device", "CUDA:1", "cuda:1"), ("device", "Cpu", "cpu"),
])
def test_validate_normalises_aliases(field, given, normal):
    assert getattr(config.validate(RunConfig(**{field: given})), field) == normal


def test_load_normalises_aliases_from_every_layer(tmp_path):
    f = write(tmp_path / "c.yaml", "scheduler: plms\n")
    cfg = load(config_files=[f], sets=["precision=autocast"], flags={"device": "cuda:1"})
    assert (cfg.scheduler, cfg.precision, cfg.device) == ("pndm", "auto", "cuda:1")


def test_load_validates(tmp_path):
    f = write(tmp_path / "c.yaml", "H: 100\n")
    with pytest.raises(UsageError, match="multiple of 8"):
        load(config_files=[f])


# --- to_yaml ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [
    RunConfig(),
    RunConfig(prompt="yes", negative_prompt="null", model="1.0", watermark_text="0123"),
    RunConfig(prompt="portrait: a cat, #2\n  second line 'q' \"dq\" \u2028 caf\xe9 \U0001F3A8", H=512, W=768,
              seed=2**63 - 1, eta=0.25, scheduler="dpm++2m-karras", fixed_code=True, outdir="out dir/x"),
], ids=["defaults", "yaml-lookalike-strings", "tricky"])
def test_to_yaml_round_trips(cfg):
    text = configfiles.to_yaml(cfg)
    assert yaml.safe_load(text) == dataclasses.asdict(cfg)


def test_to_yaml_output_loads_back_as_a_config(tmp_path):
    cfg = load(flags={"prompt": "a cat: b, c", "steps": 7, "H": 256, "scheduler": "plms", "seed": 3})
    f = write(tmp_path / "dump.yaml", configfiles.to_yaml(cfg))
    assert load(config_files=[f]) == cfg
