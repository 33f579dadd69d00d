"""The exhaustive local-logit adversary against the BagNet patch defences (issue 35), and its own scorers.

For every window of local logits some patch location reaches (every pixel corner of the image, through
:func:`bagnet.certify.affected`), the attacker rewrites those logits:

* the true class: all removed (far below every clip range), or all removed but one cell, raised to a level
  from 0 up to huge (so that detection fires and masks a window reaching clean true-class cells);
* every other class: one value over the whole window, from 0 up to huge, plus, for robust masking with
  detection, each class's largest value that detection does not yet remove (computed from the map).

The defences score classes independently, so the attacker's best is the true class's lowest score over its
options against each other class's highest over its own; a flip found this way is confirmed on the combined
map by the defence's own prediction function before it counts. The scorers here are written from the papers'
definitions, independently of bagnet/certify.py (a window covering the grid leaves exactly nothing).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from bagnet.certify import affected

LOW = -1e4                                                    # raw logit below every clip range: relu 0, cbn -1
TRUE_LEVELS = (0.0, 1.0, 3.0, 10.0, 100.0, 1e4)   # the one raised true-class cell (raw logits)
OTHER_LEVELS = (0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1e3, 1e4)


def grid_of(image_hw: tuple[int, int], q: int) -> tuple[int, int]:
    return (image_hw[0] - q) // 8 + 1, (image_hw[1] - q) // 8 + 1


def reachable(patch_px: int, q: int, image_hw: tuple[int, int]) -> list[tuple[range, range]]:
    """Every set of local logits (rows x cols) that a p x p patch at some pixel corner inside the image reaches."""
    (H, W), (h, w) = image_hw, grid_of(image_hw, q)
    rows = {affected(y, 0, patch_px, q, h, w)[0] for y in range(H - patch_px + 1)}
    cols = {affected(0, x, patch_px, q, h, w)[1] for x in range(W - patch_px + 1)}
    return [(r, c) for r in sorted(rows, key=lambda r: (r.start, r.stop)) if len(r)
            for c in sorted(cols, key=lambda c: (c.start, c.stop)) if len(c)]


# ---------------------------------------------------------------- independent scorers: raw local logits [B, h, w, K] -> [B, K]
def clipped_scorer(kind: str, c: float | None = None) -> Callable:
    def score(L):
        z = torch.tanh(0.05 * L - 1) if kind == "cbn" else L.clamp(0, math.inf if c is None else c)
        return z.sum((1, 2))
    return score


def masking_scorer(window: int, threshold: float) -> Callable:
    def score(L):
        z = L.clamp(min=0)
        B, h, w, K = z.shape
        wh, ww = min(window, h), min(window, w)
        sums = F.avg_pool2d(z.permute(0, 3, 1, 2).reshape(B * K, 1, h, w), (wh, ww), stride=1, divisor_override=1)
        top = sums.reshape(B, K, -1).amax(-1)
        g = z.sum((1, 2))
        masked = torch.zeros_like(g) if (wh, ww) == (h, w) else g - top      # removing the whole grid leaves nothing
        return torch.where((g > 0) & (top > threshold * g), masked, g)
    return score


def sweet_spots(L: torch.Tensor, windows, window: int, threshold: float, cls: int) -> list[list[float]]:
    """Per attacker window, the largest value v such that class ``cls`` at v over the window is not yet removed
    by detection (every defence window V: clean(V outside) + v n_V <= T (a + r v)): there its masked score
    a + r v is highest. Empty when detection is off or no such v > 0 exists."""
    if threshold <= 0:
        return [[] for _ in windows]
    h, w = L.shape[:2]
    inside = torch.zeros(len(windows), h, w, dtype=L.dtype)
    for n, (rows, cols) in enumerate(windows):
        inside[n, rows.start:rows.stop, cols.start:cols.stop] = 1
    z = L[..., cls].clamp(min=0) * (1 - inside)                        # [N, h, w]: clean outside the window
    pool = lambda m: F.avg_pool2d(m[:, None], (min(window, h), min(window, w)), stride=1,   # noqa: E731
                                  divisor_override=1).flatten(1)
    n_v, c_v = pool(inside), pool(z)                                   # [N, positions]
    a, r = z.sum((1, 2))[:, None], inside.sum((1, 2))[:, None]
    grows = n_v > threshold * r
    bound = torch.where(grows, (threshold * a - c_v) / (n_v - threshold * r), torch.full_like(c_v, math.inf))
    v = bound.amin(1).tolist()
    return [[x, x * (1 - 1e-9)] if 0 < x < math.inf else [] for x in v]


# ---------------------------------------------------------------- the attack
def true_options(L: torch.Tensor, label: int, windows) -> tuple[torch.Tensor, list[int]]:
    """The true class's channel under every option of every window [A, h, w, 1], and each option's window."""
    maps, owner = [], []
    for n, (rows, cols) in enumerate(windows):
        base = L[..., label].clone()
        base[rows.start:rows.stop, cols.start:cols.stop] = LOW
        cells = [(i, j) for i in range(rows.start, rows.stop) for j in range(cols.start, cols.stop)]
        opts = base.repeat(1 + len(cells) * len(TRUE_LEVELS), 1, 1)
        for k, ((i, j), v) in enumerate(((cell, v) for cell in cells for v in TRUE_LEVELS), start=1):
            opts[k, i, j] = v
        maps.append(opts)
        owner += [n] * len(opts)
    return torch.cat(maps)[..., None], owner


def other_options(L: torch.Tensor, windows, extra: list[list[float]]) -> tuple[torch.Tensor, list[int]]:
    """Every channel under one value over the window [B, h, w, K] (the true class's channel is ignored)."""
    maps, owner = [], []
    for n, (rows, cols) in enumerate(windows):
        levels = torch.tensor(sorted(set(OTHER_LEVELS) | set(extra[n])), dtype=L.dtype)
        opts = L.repeat(len(levels), 1, 1, 1)
        opts[:, rows.start:rows.stop, cols.start:cols.stop, :] = levels[:, None, None, None]
        maps.append(opts)
        owner += [n] * len(opts)
    return torch.cat(maps), owner


def find_flip(L: torch.Tensor, label: int, scorer: Callable, windows, predict: Callable[[torch.Tensor], int],
              masking: tuple[int, float] | None = None) -> torch.Tensor | None:
    """An attacked map within one reachable window whose ``predict`` is not ``label``, or None. ``masking``:
    (window, threshold) of robust masking, for the sweet spots of detection."""
    L = L.double()
    K = L.shape[-1]
    extra = [[] for _ in windows]
    for t in (t for t in range(K) if masking and t != label):
        extra = [e + s for e, s in zip(extra, sweet_spots(L, windows, *masking, t))]
    true, true_owner = true_options(L, label, windows)
    other, other_owner = other_options(L, windows, extra)
    low_all, high_all = scorer(true)[:, 0], scorer(other)
    true_owner, other_owner = torch.tensor(true_owner), torch.tensor(other_owner)
    for n in range(len(windows)):
        ti, oi = (true_owner == n).nonzero().flatten(), (other_owner == n).nonzero().flatten()
        a = int(ti[low_all[ti].argmin()])
        for t in range(K):
            b = int(oi[high_all[oi, t].argmax()])
            margin = float(low_all[a] - high_all[b, t])
            if t == label or margin > 0 or (margin == 0 and t > label):
                continue
            attacked = other[b].clone()
            attacked[..., label] = true[a, ..., 0]
            if predict(attacked) != label:
                return attacked
    return None


def random_maps(n: int, grid: tuple[int, int], k: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Local logits (float32, as a model gives them) with class 0 ahead by margins from none to large: half
    signed noise (clipping's regime), half positive evidence with little spread (masking's)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        frac = (i // 2) / max(1, n // 2)
        if i % 2 == 0:
            local = torch.randn(*grid, k, generator=g) * 10
            local[..., 0] += 100 * frac
        else:
            local = torch.rand(*grid, k, generator=g) * 1.2
            local[..., 0] = 0.4 + 1.2 * frac + 0.2 * torch.rand(*grid, generator=g)
        out.append(local)
    return out
