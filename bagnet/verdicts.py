"""The suite's one verdict vocabulary, and every threshold a verdict is read with.

Every reading of evidence (an interval column of a table, a check of ``make demo``, a claim of the paper in
results/README.md) is one of four words:

* **supported**: the 95% interval excludes "no effect" on the expected side (two-sided: on either side);
  a check that held;
* **contradicted**: it excludes it on the other side; a check that failed;
* **not shown**: it includes it;
* **cannot test**: no interval, or the run cannot speak to the claim (the reason follows in brackets).

Rows true by construction (a BagNet-q's parts cannot interact beyond q - 1 px) are implementation checks:
"check passed" / "check failed", never counted as support.

The thresholds are ours, not the papers'; each says why beside it. Tables store intervals; the words are
derived from them here when a table or README is rendered, so a reading never disagrees with its interval.
"""
from __future__ import annotations

import math
from typing import Iterable

SUPPORTED, CONTRADICTED, NOT_SHOWN, CANNOT_TEST = "supported", "contradicted", "not shown", "cannot test"
WORDS = (SUPPORTED, CONTRADICTED, NOT_SHOWN, CANNOT_TEST)
CHECK_PASSED, CHECK_FAILED = "check passed (by construction, not evidence)", "check failed"

# "learned": the lower end of a model's clean test top-1 interval is at least 3x chance and at least 0.25.
# Above-chance alone lets a model that gets 1 image in 6 right on 15 classes count, whose errors,
# interactions and sensitivity are mostly noise; a claim about a model below the floor cannot be tested.
LEARNED_FLOOR_CHANCE = 3.0
LEARNED_FLOOR = 0.25
# a heatmap ranking under 0.8 of occlusion's AUC on its own BagNet fails its control (the hand-built BagNets
# reach 0.97-0.99 at the default regions on 112 px images; tests/test_instruments.py holds them to 0.8)
CONTROL_PASS = 0.8
# negative control: a BagNet whose windows stay whole keeps its local evidence; 0.9 of its clean top-1
# (95% CI lower bound) leaves room for the tiles' borders
UNHURT_FLOOR = 0.9
# "nearly additive": interaction below 0.1 of the joint effect (CI upper bound), the scale at which the
# paper calls VGG-16's parts additive
NEARLY_ADDITIVE = 0.1
FLOAT32_ZERO = 1e-4    # logits: interactions below this are float32 rounding of an exact zero


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def by_interval(lo: float, hi: float, null: float = 0.0, expected: str | None = "greater") -> str:
    """The word for an interval ``[lo, hi]`` against ``null``, the effect expected above it (``greater``),
    below it (``less``) or on either side (None)."""
    if expected not in (None, "greater", "less"):
        raise ValueError(f"expected must be None, 'greater' or 'less', got {expected!r}")
    if _missing(lo) or _missing(hi):
        return CANNOT_TEST
    if lo <= null <= hi:
        return NOT_SHOWN
    if expected is None:
        return SUPPORTED
    return SUPPORTED if (lo > null) == (expected == "greater") else CONTRADICTED


def reading(estimate: float, lo: float, hi: float, null: float = 0.0, expected: str | None = None,
            level: float = 0.95) -> str:
    """:func:`by_interval` with its reason, for a table cell: ``reading(*ci)`` = "supported (95% CI excludes 0)"."""
    word = by_interval(lo, hi, null, expected)
    ci, at = f"{100 * level:g}% CI", f"{null:g}"
    return {SUPPORTED: f"{word} ({ci} excludes {at})", NOT_SHOWN: f"{word} ({ci} includes {at})",
            CONTRADICTED: f"{word} ({ci} excludes {at} on the other side)", CANNOT_TEST: f"{word} (no CI)"}[word]


def of_check(holds) -> str:
    """A saved check (True / False, or None / NaN when it could not be tested) as a word."""
    if _missing(holds):
        return CANNOT_TEST
    return SUPPORTED if bool(holds) else CONTRADICTED


def word(text: str) -> str:
    """The verdict word a reading starts with: "**supported** (...)" -> "supported"."""
    head = str(text).strip().strip("*")
    for w in (*WORDS, "check passed", "check failed"):
        if head.startswith(w):
            return w
    raise ValueError(f"not a verdict: {text!r}")


def combine(words: Iterable[str]) -> str:
    """One verdict for a claim read on several intervals: any contradiction wins, then any gap; no interval at all
    is no evidence (cannot test)."""
    got = [word(w) for w in words]
    if not got:
        return CANNOT_TEST
    for w in (CONTRADICTED, NOT_SHOWN, CANNOT_TEST):
        if w in got:
            return w
    return SUPPORTED


def emphasis(text: str) -> str:
    """Markdown: the decisive words in bold ("**supported**"), the others as they are."""
    w = word(text)
    return text.replace(w, f"**{w}**", 1) if w in (SUPPORTED, CONTRADICTED, "check failed") else text


def learned_floor(chance: float) -> float:
    """The clean top-1 a model's interval must reach to count as learned (see :data:`LEARNED_FLOOR`)."""
    return max(LEARNED_FLOOR_CHANCE * chance, LEARNED_FLOOR)
