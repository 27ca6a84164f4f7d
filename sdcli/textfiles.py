"""Text a user gives in files (prompt files, configs), decoded and parsed within bounds: no encoding guessed
wrong, no alias bomb or nesting that hangs or overflows a parser, every problem one line naming the file."""

from __future__ import annotations

import json
from typing import Any

from .errors import UsageError

MAX_DEPTH = 32  # nesting of YAML/JSON values: rows and settings need 3
MAX_VALUES = 1_000_000  # values in one file with its aliases expanded: an "alias bomb" expands to billions


def decode(raw: bytes, name: str) -> str:
    """UTF-8 text (a BOM is dropped). UTF-16/32 and binary data are refused with what they are."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_utf16(raw):
        raise UsageError(f"{name}: UTF-16 text; UTF-8 is expected: save the file as UTF-8")
    if b"\0" in raw:
        raise UsageError(f"{name}: binary data (NUL bytes); give a text file in UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UsageError(f"{name}: not UTF-8 (line {line}); save the file as UTF-8") from None


def _looks_utf16(raw: bytes) -> bool:
    """UTF-16 without a BOM: ASCII text with a NUL in every other byte."""
    sample = raw[:512]
    return len(sample) >= 4 and (sample[1::2].count(0) > len(sample) // 4 or sample[0::2].count(0) > len(sample) // 4)


def lines(text: str) -> list[str]:
    """Lines split at line feeds only (and CRLF): a form feed, U+2028 or U+0085 inside a line is text, not a
    line break (str.splitlines would split there and shift every later line)."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load``, then the shape checked: aliases are shared, not copied, while loading, but whatever
    walks the result later (OmegaConf) expands them: a YAML "alias bomb" is refused here."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise UsageError(f"{where}: invalid YAML{f' at line {mark.line + 1}' if mark else ''}; fix the syntax") from None
    except RecursionError:
        raise _too_deep(where) from None
    check_shape(data, where)
    return data


def load_json(text: str, where: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{where}: invalid JSON ({e.msg}); one JSON object per line") from None
    except RecursionError:
        raise _too_deep(where) from None
    check_shape(data, where)
    return data


def check_shape(data: Any, where: str) -> None:
    """Refuse values nested deeper than MAX_DEPTH (cycles included) or holding more than MAX_VALUES values
    once shared (aliased) parts are counted as often as they appear."""
    known: dict[int, tuple[int, int]] = {}  # id -> (values, height) of a container already measured

    def measure(value: Any, depth: int) -> tuple[int, int]:
        if not isinstance(value, (dict, list)):
            return 1, 0
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        if id(value) not in known:
            values, height = 1, 0
            for child in (value.values() if isinstance(value, dict) else value):
                n, h = measure(child, depth + 1)
                values, height = values + n, max(height, h + 1)
            known[id(value)] = (values, height)
        values, height = known[id(value)]
        if depth + height > MAX_DEPTH:
            raise _too_deep(where)
        return values, height

    if measure(data, 0)[0] > MAX_VALUES:
        raise UsageError(f"{where}: more than {MAX_VALUES} values once its YAML aliases (*name) are expanded; "
                         "write the values out, or use fewer aliases")


def _too_deep(where: str) -> UsageError:
    return UsageError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config or prompt row is a flat mapping")
