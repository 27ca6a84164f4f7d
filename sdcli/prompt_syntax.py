"""Prompt text -> what the text encoder gets: AUTOMATIC1111's attention syntax and ``BREAK``, and its
``<lora:NAME:WEIGHT>`` tags. Pure: no torch (textencode.py turns the fragments into embeddings).

The attention syntax, as A1111 documents it (wiki "Features: Attention/emphasis"):
``(text)`` x1.1, ``[text]`` /1.1, ``(text:1.3)`` x1.3, nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` are
literal brackets, an unclosed bracket applies to the end of the prompt, an unmatched closing one is text,
and ``BREAK`` (upper case, a word of its own) starts a new 75-token chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SYNTAXES = ("a1111", "compel", "none")
UP, DOWN = 1.1, 1 / 1.1
BREAK = "BREAK"

# One piece of prompt text at a time: escapes, brackets, ":weight)" closing a round bracket, plain text.
_PIECE = re.compile(r"""
    \\[()\[\]\\]                 # an escaped bracket or backslash: literal
  | \\                           # a lone backslash: literal
  | \(                           # open round
  | \[                           # open square
  | :\s*([+-]?[.\d]+)\s*\)       # :1.3) closes a round bracket with its weight
  | \)                           # close round
  | \]                           # close square
  | [^\\()\[\]:]+                # text
  | :                            # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.I)


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_attention(text: str) -> list[Fragment]:
    """A1111 prompt text -> fragments with weights (neighbours of equal weight merged), BREAK as markers."""
    out: list[list] = []  # [text, weight] pairs, weight -1 marks a BREAK
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for pair in out[start:]:
            if pair[1] != -1:  # a BREAK inside brackets stays a BREAK
                pair[1] *= factor

    for m in _PIECE.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            out.append([piece[1:] if len(piece) == 2 else piece, 1.0])
        elif piece == "(":
            round_open.append(len(out))
        elif piece == "[":
            square_open.append(len(out))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _number(weight))
        elif piece == ")" and round_open:
            multiply(round_open.pop(), UP)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), DOWN)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    out.append([BREAK, -1.0])
                if part:
                    out.append([part, 1.0])
    for start in round_open:
        multiply(start, UP)
    for start in square_open:
        multiply(start, DOWN)
    merged: list[list] = []
    for pair in out:
        if merged and pair[1] == merged[-1][1] and pair[1] != -1:
            merged[-1][0] += pair[0]
        else:
            merged.append(list(pair))
    if not merged:
        return [Fragment("", 1.0)]
    return [Fragment("", 1.0, True) if w == -1 else Fragment(t, w) for t, w in merged]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def is_plain(text: str) -> bool:
    """No weighting and no BREAK: the text encoder gets the text as it is."""
    frags = parse_attention(text)
    return len(frags) == 1 and not frags[0].is_break and frags[0].weight == 1.0 and frags[0].text == text


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """``<lora:NAME:WEIGHT>`` tags of a prompt, in order: (name, weight); a missing weight is 1."""
    out = []
    for name, weight in _LORA_TAG.findall(prompt):
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"<lora:{name}:{weight}>: the weight must be a number, e.g. <lora:{name}:0.8>") from None
        out.append((name.strip(), value))
    return out


def strip_lora_tags(prompt: str) -> str:
    """The prompt as the text encoder sees it: the tags removed (as A1111 does)."""
    return _LORA_TAG.sub("", prompt)
