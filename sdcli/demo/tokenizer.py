"""A CLIP tokenizer for the demo world with one token per word.

vocab.json: the 256 byte-level characters and their ``</w>`` forms, ``<|startoftext|>``, ``<|endoftext|>``,
then every intermediate and final token of the merges that spell each world word as ``word</w>``.
merges.txt: those BPE merges, left to right (c,i -> ci; ci,r -> cir; ...; circl,e</w> -> circle</w>).
Load with ``CLIPTokenizer.from_pretrained(folder, model_max_length=77)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..tiny import byte_alphabet
from . import world


def bytes_to_unicode() -> list[str]:
    """The byte-level alphabet of CLIP's BPE, in byte order (the order of this tokenizer's vocab.json)."""
    alphabet = byte_alphabet()
    return [alphabet[b] for b in range(256)]


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word: repeatedly merge the best-ranked adjacent pair."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges (in rank order) under which BPE turns each word into the single token ``word</w>``."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for w in words:
        while len(parts := bpe(w, ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(merges)  # lowest priority: earlier words keep their tokens
            merges.append((parts[0], parts[1]))
    return merges


def write_tokenizer(folder: str | Path, words: list[str] | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[tok] = len(vocab)
    merges = build_merges(words or world.VOCAB)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    files = {"vocab.json": json.dumps(vocab, ensure_ascii=False),
             "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
             "special_tokens_map.json": json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                                    "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})}
    for name, text in files.items():  # atomically: two trainings may share a work folder
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / name)


def load(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_tokenizer(d)
        tok = load(d)
        print("vocab size", len(tok))
        for text in ["a small red circle", "a large orange star on a blue background, top left",
                     "make the circle green", "turn it into a square"]:
            toks = tok.tokenize(text)
            print(text, "->", toks)
            assert len([t for t in toks if t != ",</w>"]) == len(text.replace(",", "").split()), toks
        for w in world.VOCAB:
            assert tok.tokenize(w) == [w + "</w>"], (w, tok.tokenize(w))
        ids = tok("a small red circle", padding="max_length", max_length=77).input_ids
        assert len(ids) == 77 and ids[0] == tok.bos_token_id
        print("ok: one token per word")
