"""The sections, in the order they run and appear in the report: the one place a section is registered.

A section is a module with ``NAME``, ``measure(bench: Bench) -> dict`` (the JSON it adds under
``sections[NAME]``) and ``render(data: dict) -> list[str]`` (its markdown lines, from that JSON alone)."""

from __future__ import annotations

from . import batch, concepts, duel, limits, memory, options, overhead, peers, scaleout, startup

SECTIONS = {s.NAME: s for s in (startup, overhead, memory, batch, options, concepts, scaleout, peers, duel, limits)}
