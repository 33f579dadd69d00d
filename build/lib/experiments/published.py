"""The published numbers of experiments/published.yaml, typed: each entry with its numbers, unit, source and
whether this project verified it there. Nothing else in the suite types a published number."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml

UNITS = ("fraction", "percent", "ratio")


@dataclass(frozen=True)
class Entry:
    """One published row: ``numbers`` by name (None: not published), in ``unit``."""

    numbers: dict[str, float | None]
    unit: str
    source: str
    verified: bool
    note: str = ""

    def __getitem__(self, name: str) -> float | None:
        return self.numbers.get(name)


@cache
def _sections() -> dict[str, dict[str, Entry]]:
    raw = yaml.safe_load(files("experiments").joinpath("published.yaml").read_text())
    return {name: _entries(name, section) for name, section in raw.items()}


def _entries(name: str, section: dict) -> dict[str, Entry]:
    if section.get("unit") not in UNITS:
        raise ValueError(f"published.yaml: section {name} has unit {section.get('unit')!r}, not one of {UNITS}")
    meta = ("source", "verified", "note")
    out = {}
    for key, entry in section["entries"].items():
        info = {k: entry.get(k, section.get(k, "")) for k in meta}   # an entry's own source etc. win
        numbers = {k: (None if v is None else float(v)) for k, v in entry.items() if k not in meta}
        out[str(key)] = Entry(numbers, section["unit"], str(info["source"]), bool(info["verified"]),
                              str(info["note"] or ""))
    return out


def section(name: str) -> dict[str, Entry]:
    """The entries of one section (``imagenet``, ``texture``, ``runtime``, ``report_table1``, ``precision``,
    ``patch_robustness``), in the file's order."""
    return dict(_sections()[name])


def imagenet_accuracy() -> dict[str, tuple[float | None, float | None, str]]:
    """Model -> (top-1, top-5, source), fractions."""
    return {m: (e["top1"], e["top5"], e.source) for m, e in section("imagenet").items()}


def texture_top5() -> dict[str, tuple[float | None, float | None, str]]:
    """Model -> (top-5 on the originals, top-5 on their Gatys textures, source), fractions."""
    return {m: (e["clean"], e["texturised"], e.source) for m, e in section("texture").items()}


def report_table1() -> dict[str, tuple[float | None, float | None, float | None]]:
    """The 15-Scene report's Table 1: model -> (val, test, scrambled test) top-1, fractions."""
    return {m: (e["val"], e["test"], e["scrambled"]) for m, e in section("report_table1").items()}


def numbers() -> list[tuple[float, str]]:
    """Every published number with its unit (the documents may quote these, and only these, by hand)."""
    return [(v, e.unit) for entries in _sections().values() for e in entries.values()
            for v in e.numbers.values() if v is not None]
