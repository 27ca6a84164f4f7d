"""Users' own concepts and prompts (issue 10): LoRAs, textual-inversion embeddings, per-row VAE, clip skip,
A1111 prompt weighting and long prompts. LoRAs and embeddings are built here with peft on the tiny models and
saved in the real file layouts (concept_files.py); everything runs through the CLI as users call it."""

from __future__ import annotations

import json
import math

import pytest

from concept_files import make_embedding, make_lora, to_kohya
from helpers import FAST, manifest, pixels

ONE = ["--n_samples", 1, "--n_iter", 1, "--seed", 7, "--no-safety-checker", "--no-watermark"]
PROMPT = "a red circle"


@pytest.fixture(scope="session")
def files(tiny, tmp_path_factory):
    """LoRAs and embeddings for the tiny models (all tasks share the attention layers and text encoder)."""
    root = tmp_path_factory.mktemp("concepts")
    model = tiny("txt2img")
    out = {
        "a": make_lora(model, root / "loras" / "style_a.safetensors", seed=1),
        "b": make_lora(model, root / "loras" / "style_b.safetensors", seed=2, layout="kohya"),
        "emb": make_embedding(root / "emb" / "thing.safetensors", token="<thing>", seed=3, scale=3.0),
        "neg": make_embedding(root / "emb" / "badthing.safetensors", layout="a1111", seed=4, vectors=2, scale=3.0),
        "pt": make_embedding(root / "pt" / "ptthing.pt", layout="a1111-pt", seed=3, scale=3.0),
        "root": root,
    }
    to_kohya(out["a"], root / "kohya_a.safetensors")
    out["a_kohya"] = root / "kohya_a.safetensors"
    return out


def render(sdcli, tmp_path, name, *args, task="txt2img", model=None, tiny=None, prompt=PROMPT):
    out = tmp_path / name
    r = sdcli(task, "--model", model or tiny(task), *FAST, *ONE,
              "--prompt", prompt, "--outdir", out, *args)
    assert r.code == 0, r.err
    return pixels(out / "samples" / "00000.png"), manifest(out)[0], r


# --- LoRA ------------------------------------------------------------------------------------------------

def test_a_lora_changes_the_image_weight_0_is_no_lora_and_two_compose(sdcli, tiny, tmp_path, files):
    plain, _, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    a, rec, r = render(sdcli, tmp_path, "a", "--lora", files["a"], tiny=tiny)
    assert r.loads == 1 and "loaded 1 LoRA(s)" in r.err
    assert abs(a - plain).max() > 10
    zero, _, _ = render(sdcli, tmp_path, "zero", "--lora", f"{files['a']}:0", tiny=tiny)
    assert (zero == plain).all()
    b, _, _ = render(sdcli, tmp_path, "b", "--lora", files["b"], tiny=tiny)
    both, rec2, _ = render(sdcli, tmp_path, "both", "--lora", files["a"], "--lora", f"{files['b']}:1.0", tiny=tiny)
    assert min(abs(both - a).max(), abs(both - b).max(), abs(b - a).max()) > 10
    half_b, _, _ = render(sdcli, tmp_path, "a+0b", "--lora", files["a"], "--lora", f"{files['b']}:0", tiny=tiny)
    assert (half_b == a).all()  # a second LoRA at weight 0 adds nothing
    assert [(x["name"], x["weight"]) for x in rec2["loras"]] == [("style_a", 1.0), ("style_b", 1.0)]
    assert all(len(x["sha256"]) == 64 for x in rec2["loras"])


def test_kohya_layout_equals_the_diffusers_layout_of_the_same_weights(sdcli, tiny, tmp_path, files):
    a, _, _ = render(sdcli, tmp_path, "a", "--lora", f"{files['a']}:0.7", tiny=tiny)
    k, _, _ = render(sdcli, tmp_path, "k", "--lora", f"{files['a_kohya']}:0.7", tiny=tiny)
    assert (a == k).all()


def test_a1111_lora_tags_resolve_in_lora_dir_and_the_prompt_is_recorded_as_typed(sdcli, tiny, tmp_path, files):
    flag, _, _ = render(sdcli, tmp_path, "flag", "--lora", f"{files['a']}:0.6", tiny=tiny)
    tagged, rec, _ = render(sdcli, tmp_path, "tag", "--lora-dir", files["a"].parent, tiny=tiny,
                            prompt=f"{PROMPT} <lora:style_a:0.6>")
    assert (flag == tagged).all()
    assert rec["prompt"] == f"{PROMPT} <lora:style_a:0.6>" and rec["loras"][0]["weight"] == 0.6


def test_lora_errors_come_before_the_model_loads(sdcli, tiny, tmp_path, files):
    base = ["txt2img", "--model", tiny(), *FAST, *ONE, "--outdir", tmp_path / "o"]
    r = sdcli(*base, "--prompt", "x <lora:styel_a:1>", "--lora-dir", files["a"].parent)
    assert r.one_error(2, "<lora:styel_a>", "did you mean 'style_a'") and r.loads == 0
    r = sdcli(*base, "--prompt", "x <lora:style_a>")
    assert r.one_error(2, "--lora-dir") and r.loads == 0
    r = sdcli(*base, "--lora", tmp_path / "missing.safetensors")
    assert r.one_error(2, "missing.safetensors", "no such file") and r.loads == 0
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file")
    r = sdcli(*base, "--lora", junk)
    assert r.one_error(2, "junk.safetensors", "not a readable .safetensors") and r.loads == 0
    r = sdcli(*base, "--lora", files["emb"])
    assert r.one_error(2, "thing.safetensors", "not a LoRA", "--embedding") and r.loads == 0
    sdxl = fake_safetensors(tmp_path / "xl.safetensors", {
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)})
    r = sdcli(*base, "--lora", sdxl)
    assert r.one_error(2, "xl.safetensors", "SDXL", "2048", "32") and r.loads == 0
    sd1 = fake_safetensors(tmp_path / "sd1.safetensors", {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768)})
    r = sdcli(*base, "--lora", sd1)
    assert r.one_error(2, "sd1.safetensors", "SD 1.x", "768") and r.loads == 0
    r = sdcli(*base, "--lora", f"{files['a']}:heavy")
    assert r.one_error(2, "no such file") and r.loads == 0
    r = sdcli(*base, "--fuse-lora")
    assert r.one_error(2, "--fuse-lora", "no LoRA") and r.loads == 0


def fake_safetensors(path, shapes: dict):
    """A .safetensors file with zero tensors of the given shapes (only the header matters to the checks)."""
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(s) for k, s in shapes.items()}, str(path))
    return path


def test_fuse_lora_matches_the_unfused_image_and_refuses_several_sets(sdcli, tiny, tmp_path, files):
    unfused, _, _ = render(sdcli, tmp_path, "u", "--lora", f"{files['a']}:0.8", "--lora", files["b"], tiny=tiny)
    fused, _, r = render(sdcli, tmp_path, "f", "--lora", f"{files['a']}:0.8", "--lora", files["b"], "--fuse-lora",
                         tiny=tiny)
    assert "LoRAs fused" in r.err and abs(fused - unfused).max() <= 2
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "lora": f"{files['a']}:0.5"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--from-file", rows, "--fuse-lora", "--outdir", tmp_path / "o")
    assert r.one_error(2, "--fuse-lora", "different LoRA sets") and r.loads == 0


def test_rows_name_their_own_loras_batches_split_and_the_model_loads_once(sdcli, tiny, tmp_path, files):
    a, _, _ = render(sdcli, tmp_path, "a", "--lora", f"{files['a']}:0.5", tiny=tiny)
    plain, _, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(row) for row in [
        {"prompt": PROMPT, "lora": [f"{files['a'].name}:0.5"], "seed": 7},  # relative to the prompt file
        {"prompt": PROMPT, "seed": 7},
        {"prompt": f"{PROMPT} <lora:style_a:0.5>", "seed": 7}]) + "\n")
    (tmp_path / files["a"].name).write_bytes(files["a"].read_bytes())
    out = tmp_path / "rows"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 3, "--n_iter", 1, "--no-safety-checker",
              "--no-watermark", "--from-file", rows, "--lora-dir", files["a"].parent, "--outdir", out)
    assert r.code == 0 and r.loads == 1, r.err
    images = [pixels(out / "samples" / f"{i:05d}.png") for i in range(3)]
    assert (images[0] == a).all() and (images[1] == plain).all() and (images[2] == a).all()
    assert [len(m.get("loras", [])) for m in manifest(out)] == [1, 0, 1]


def test_resume_treats_a_changed_lora_file_as_new_work(sdcli, tiny, tmp_path, files):
    lora = tmp_path / "mine.safetensors"
    lora.write_bytes(files["a"].read_bytes())
    args = ["txt2img", "--model", tiny(), *FAST, *ONE, "--lora", lora, "--outdir", tmp_path / "o", "--resume"]
    assert sdcli(*args).code == 0
    r = sdcli(*args)
    assert r.code == 0 and r.loads == 0 and "nothing to generate" in r.err
    lora.write_bytes(files["b"].read_bytes())
    r = sdcli(*args)
    assert r.code == 0 and r.loads == 1
    assert [m["loras"][0]["sha256"] for m in manifest(tmp_path / "o")] == [sha(files["a"]), sha(files["b"])]


def sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_files_and_set_take_loras_like_the_flag(sdcli, tiny, tmp_path, files):
    flag, _, _ = render(sdcli, tmp_path, "flag", "--lora", f"{files['a']}:0.4", "--clip-skip", 2, tiny=tiny)
    config = tmp_path / "run.yaml"
    config.write_text(f"lora: ['{files['a']}:0.4']\nclip_skip: 2\n")
    conf, _, _ = render(sdcli, tmp_path, "conf", "--config", config, tiny=tiny)
    dotted, _, _ = render(sdcli, tmp_path, "set", "--set", f"lora={files['a']}:0.4", "--set", "clip_skip=2", tiny=tiny)
    assert (flag == conf).all() and (flag == dotted).all()


# --- embeddings ------------------------------------------------------------------------------------------

def test_an_embedding_acts_only_where_its_token_is_written(sdcli, tiny, tmp_path, files):
    plain, _, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    unused, rec, _ = render(sdcli, tmp_path, "unused", "--embedding", files["emb"], tiny=tiny)
    assert (unused == plain).all() and "embeddings" not in rec
    plain_t, _, _ = render(sdcli, tmp_path, "plain_t", tiny=tiny, prompt=f"{PROMPT} thing")
    used, rec, _ = render(sdcli, tmp_path, "used", "--embedding", files["emb"], tiny=tiny, prompt=f"{PROMPT} <thing>")
    assert abs(used - plain).max() > 10 and abs(used - plain_t).max() > 10
    assert rec["embeddings"][0]["token"] == "<thing>" and rec["embeddings"][0]["sha256"] == sha(files["emb"])
    renamed, _, _ = render(sdcli, tmp_path, "renamed", "--embedding", f"{files['emb']}:<other>", tiny=tiny,
                           prompt=f"{PROMPT} <other>")
    assert (renamed == used).all()


def test_embedding_dir_and_negative_embeddings(sdcli, tiny, tmp_path, files):
    folder = files["emb"].parent
    plain, _, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    neg, rec, r = render(sdcli, tmp_path, "neg", "--embedding-dir", folder, "--negative-prompt", "badthing",
                         tiny=tiny)
    assert abs(neg - plain).max() > 10 and "loaded 0 LoRA(s), 1 embedding(s)" in r.err
    assert [e["token"] for e in rec["embeddings"]] == ["badthing"] and rec["embeddings"][0]["vectors"] == 2
    explicit, _, _ = render(sdcli, tmp_path, "explicit", "--embedding", files["neg"], "--negative-prompt",
                            "badthing", tiny=tiny)
    assert (explicit == neg).all()


def test_a1111_pt_embeddings_load_through_safe_loading_only(sdcli, tiny, tmp_path, files):
    st, _, _ = render(sdcli, tmp_path, "st", "--embedding", f"{files['emb']}:ptthing", tiny=tiny,
                      prompt=f"{PROMPT} ptthing")
    pt, rec, _ = render(sdcli, tmp_path, "pt", "--embedding", files["pt"], tiny=tiny, prompt=f"{PROMPT} ptthing")
    assert (st == pt).all() and rec["embeddings"][0]["token"] == "ptthing"
    import torch

    evil = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "hook": Exploit()}, str(evil))
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--embedding", evil, "--outdir", tmp_path / "o")
    assert r.one_error(2, "evil.pt", "--allow-unsafe-pickle") and r.loads == 0


class Exploit:
    """A pickled object that is not a tensor (what a malicious file would carry)."""


def test_embedding_errors_come_before_the_model_loads(sdcli, tiny, tmp_path, files):
    base = ["txt2img", "--model", tiny(), *FAST, *ONE, "--outdir", tmp_path / "o"]
    r = sdcli(*base, "--embedding", f"{files['emb']}:r")  # the tiny vocabulary: one token per character
    assert r.one_error(2, "'r'", "already a word") and r.loads == 0
    wide = make_embedding(tmp_path / "sd15.safetensors", dim=768, token="<wide>")
    r = sdcli(*base, "--embedding", wide)
    assert r.one_error(2, "sd15.safetensors", "SD 1.x", "768", "32") and r.loads == 0
    xl = fake_safetensors(tmp_path / "xl.safetensors", {"clip_l": (1, 768), "clip_g": (1, 1280)})
    r = sdcli(*base, "--embedding", xl)
    assert r.one_error(2, "xl.safetensors", "SDXL") and r.loads == 0
    r = sdcli(*base, "--embedding", files["a"])
    assert r.one_error(2, "style_a.safetensors", "not a textual-inversion embedding") and r.loads == 0
    r = sdcli(*base, "--embedding", f"{files['emb']}:<x>", "--embedding", f"{files['neg']}:<x>")
    assert r.one_error(2, "'<x>' already names") and r.loads == 0


# --- prompt weighting and long prompts ---------------------------------------------------------------------

def test_weight_one_equals_the_plain_word_and_weights_change_the_image(sdcli, tiny, tmp_path):
    plain, rec, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    one, _, _ = render(sdcli, tmp_path, "one", tiny=tiny, prompt="a (red:1.0) circle")
    assert (one == plain).all() and rec["prompt_syntax"] == "a1111"
    up, _, _ = render(sdcli, tmp_path, "up", tiny=tiny, prompt="a (red:1.6) circle")
    down, _, _ = render(sdcli, tmp_path, "down", tiny=tiny, prompt="a [red] circle")
    assert abs(up - plain).max() > 0 and abs(down - plain).max() > 0 and abs(up - down).max() > 0
    literal, _, _ = render(sdcli, tmp_path, "literal", "--prompt-syntax", "none", tiny=tiny,
                           prompt="a (red:1.6) circle")
    assert abs(literal - up).max() > 0  # none: the brackets are text


def test_weighting_scales_the_token_vectors_as_a1111_does(tiny):
    """Compare the embeddings: the weighted word's vector grows (shrinks) against the others."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdcli.textencode import PromptEncoder

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny()), safety_checker=None, requires_safety_checker=False)
    enc = PromptEncoder(pipe)
    plain, _ = enc.encode("a red circle", "", False, "a1111", 1)
    ids = enc.chunks("a red circle")[0][0]
    red = [i for i, t in enumerate(ids) if t in enc.token_ids("red")][:3]  # one token per character
    others = [i for i in range(len(ids)) if i not in red]

    def ratio(z):
        return z[0, red].norm(dim=-1).mean() / z[0, others].norm(dim=-1).mean()

    for text, direction in (("a (red:1.5) circle", 1), ("a [red] circle", -1), ("a (red) circle", 1)):
        weighted, _ = enc.encode(text, "", False, "a1111", 1)
        assert weighted.shape == plain.shape
        assert direction * (ratio(weighted) - ratio(plain)) > 0.01, text
    unit, _ = enc.encode("a (red:1.0) circle", "", False, "a1111", 1)
    assert torch.equal(unit, plain)


def test_emphasis_restores_the_chunks_mean_as_a1111_does():
    import torch

    from sdcli.textencode import apply_weights

    z = torch.randn(1, 77, 8) + 0.5
    weights = [1.0] * 77
    weights[3] = 1.5
    out = apply_weights(z, weights)
    assert torch.allclose(out.mean(), z.mean(), rtol=1e-5)
    assert out[0, 3].norm() / z[0, 3].norm() > 1.4 and torch.allclose(out[0, 5] / z[0, 5], out[0, 6] / z[0, 6])
    assert apply_weights(z, [1.0] * 77) is z


def test_long_prompts_are_chunked_and_their_tail_changes_the_image(sdcli, tiny, tmp_path):
    """The tiny tokenizer has one token per character: this prompt is ~200 tokens."""
    head = "a red circle on a blue background, " * 5
    one, rec, r = render(sdcli, tmp_path, "one", tiny=tiny, prompt=head + "zebra")
    two, _, _ = render(sdcli, tmp_path, "two", tiny=tiny, prompt=head + "giraffe")
    assert abs(one - two).max() > 0 and rec["truncated"] is False and "dropped" not in r.err
    cut1, rec, r = render(sdcli, tmp_path, "cut1", "--prompt-syntax", "none", tiny=tiny, prompt=head + "zebra")
    cut2, _, _ = render(sdcli, tmp_path, "cut2", "--prompt-syntax", "none", tiny=tiny, prompt=head + "giraffe")
    assert (cut1 == cut2).all() and rec["truncated"] is True and "dropped" in r.err


def test_chunks_break_and_comma_backtrack(tiny):
    from diffusers import StableDiffusionPipeline

    from sdcli.textencode import PromptEncoder

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny()), safety_checker=None, requires_safety_checker=False)
    enc = PromptEncoder(pipe)
    assert len(enc.chunks("a BREAK b")) == 2 and len(enc.chunks("a")) == 1 and len(enc.chunks("")) == 1
    chunks = enc.chunks("x" * 70 + ",yyyyyyyy")  # 79 tokens: the comma at 70 moves "yyyyyyyy" to chunk 2
    assert len(chunks) == 2 and all(len(ids) == 77 for ids, _ in chunks)
    assert chunks[1][0][1:9] == enc.token_ids("yyyyyyyy")
    pe, ne = enc.encode("(long:1.2) " * 30, "", True, "a1111", 1)
    assert pe.shape == ne.shape and pe.shape[1] % 77 == 0 and pe.shape[1] > 77


@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
])
def test_the_attention_parser_matches_a1111s_documented_examples(text, expected):
    from sdcli.prompt_syntax import parse_attention

    got = [(f.text, f.weight) for f in parse_attention(text)]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(got, expected))


def test_compel_syntax_and_clip_skip(sdcli, tiny, tmp_path):
    plain, _, _ = render(sdcli, tmp_path, "plain", tiny=tiny)
    compel, rec, _ = render(sdcli, tmp_path, "compel", "--prompt-syntax", "compel", tiny=tiny,
                            prompt="a (red)1.5 circle")
    assert abs(compel - plain).max() > 0 and rec["prompt_syntax"] == "compel"
    same, _, _ = render(sdcli, tmp_path, "same", "--prompt-syntax", "compel", tiny=tiny)
    assert abs(same - plain).max() <= 1
    skip, rec, _ = render(sdcli, tmp_path, "skip", "--clip-skip", 2, tiny=tiny)
    assert abs(skip - plain).max() > 0 and rec["clip_skip"] == 2
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--clip-skip", 3, "--prompt-syntax", "compel",
              "--outdir", tmp_path / "o")
    assert r.one_error(2, "--clip-skip 3", "compel") and r.loads == 0
    r = sdcli("txt2img", "--model", tiny(), *FAST, *ONE, "--clip-skip", 40, "--outdir", tmp_path / "o")
    assert r.one_error(2, "--clip-skip 40", "layers") and r.loads == 0


# --- records and third-party readers ------------------------------------------------------------------------

def test_metadata_records_loras_embeddings_and_clip_skip_as_a1111_writes_them(sdcli, tiny, tmp_path, files):
    from sd_parsers import ParserManager

    from sdcli import hashes
    from sdcli.records import parse_a1111

    _, rec, _ = render(sdcli, tmp_path, "m", "--lora", f"{files['a']}:0.8", "--embedding", files["emb"],
                       "--clip-skip", 2, tiny=tiny, prompt=f"{PROMPT} <thing>")
    path = tmp_path / "m" / "samples" / "00000.png"
    from PIL import Image

    with Image.open(path) as im:
        text = im.text["parameters"]
    params = parse_a1111(text)
    addnet = hashes.file_sha256(files["a"], addnet=True)
    assert params["Lora hashes"] == f"style_a: {addnet[:12]}"
    assert params["TI hashes"] == f"<thing>: {sha(files['emb'])[:12]}"
    assert params["Clip skip"] == "2"
    info = ParserManager().parse(str(path))
    assert info.metadata["Hashes"] == {"model": rec["model_sha256"][:10], "lora:style_a": addnet[:10],
                                       "embed:<thing>": sha(files["emb"])[:10]}
    assert info.metadata["Clip skip"] == "2"
    assert rec["loras"][0]["weight"] == 0.8 and rec["embeddings"][0]["token"] == "<thing>"


def test_a_row_may_name_its_own_vae(sdcli, tiny, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(tiny()), subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)
    vae.save_pretrained(str(tmp_path / "brighter"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": PROMPT, "seed": 7}) + "\n"
                    + json.dumps({"prompt": PROMPT, "seed": 7, "vae": "brighter"}) + "\n")
    out = tmp_path / "o"
    r = sdcli("txt2img", "--model", tiny(), *FAST, "--n_samples", 2, "--n_iter", 1, "--no-safety-checker",
              "--no-watermark", "--from-file", rows, "--outdir", out)
    assert r.code == 0 and r.loads == 1, r.err
    own, other = (pixels(out / "samples" / f"{i:05d}.png") for i in range(2))
    assert (other.astype(int) - own.astype(int)).mean() > 5
    recs = manifest(out)
    assert "vae" not in recs[0] and recs[1]["vae"]["name"] == "brighter" and len(recs[1]["vae"]["sha256"]) == 64
    with __import__("PIL.Image").Image.open(out / "samples" / "00001.png") as im:
        assert "VAE: brighter" in im.text["parameters"]


# --- every subcommand ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint", "depth2img", "instruct-edit"])
def test_every_subcommand_takes_loras_embeddings_weights_and_long_prompts(sdcli, tiny, tmp_path, files, task):
    from PIL import Image

    image, mask, depth = tmp_path / "in.png", tmp_path / "mask.png", tmp_path / "depth.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    Image.new("L", (64, 64), 255).save(mask)
    Image.linear_gradient("L").resize((64, 64)).save(depth)
    inputs = {"txt2img": [], "img2img": ["--image", image], "inpaint": ["--image", image, "--mask", mask],
              "depth2img": ["--image", image, "--depth-map", depth], "instruct-edit": ["--image", image]}[task]
    long = "make it (blue:1.3) <thing>, " + "with many words " * 12
    plain, _, _ = render(sdcli, tmp_path, "plain", *inputs, task=task, tiny=tiny, prompt="make it blue")
    got, rec, _ = render(sdcli, tmp_path, "all", *inputs, "--lora", f"{files['a']}:0.9", "--embedding", files["emb"],
                         "--clip-skip", 2, task=task, tiny=tiny, prompt=long)
    assert abs(got - plain).max() > 0
    assert rec["loras"][0]["name"] == "style_a" and rec["embeddings"][0]["token"] == "<thing>"
    assert rec["clip_skip"] == 2 and rec["truncated"] is False
