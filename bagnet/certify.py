"""Certified robustness of BagNets to one adversarial square patch (any content, any location).

Threat model: the attacker replaces a p x p square of the image (anywhere inside it) by anything. A BagNet's
local logit (i, j) sees only the q x q window with top-left (8i, 8j), so a patch at (y, x) can change only the
local logits with 8i in (y - q, y + p) and 8j in (x - q, x + p): at most w = ceil((p + q - 1) / 8) consecutive
rows and as many columns, clamped per axis to the grid (a grid of h rows and w' columns gets a window of
min(w, h) x min(w, w')). Everything below is a function of the local logits ``L`` [h, w', K] and that window;
a window that covers the whole grid certifies nothing (the patch may then rewrite every local logit).

* **Clipped BagNet** (Zhang, Yuan, Mu & Wagner 2020): local logits clipped (``tanh(0.05 x - 1)``, their CBN,
  range (-1, 1); or ``[0, c]``), then summed. Certified for label y if for every window position and every
  class t != y, the evidence difference y - t summed outside the window exceeds the most the window can
  change it: its area x (hi - lo). (PatchGuard's reference code checks only the runner-up class; all are
  checked here.)
* **PatchGuard robust masking** (Xiang et al. 2021, Algorithm 1): local logits clipped to [0, inf) (or
  [0, c]); for each class the window with the most evidence is removed (with detection threshold T: only when
  it holds more than a share T of the class's evidence). Certified when, for every window position the
  attacker may own, an upper bound on every wrong class's masked evidence stays below a lower bound on the
  true class's (:func:`certify_masking` proves both bounds; the true class's differs from the reference
  implementation's, whose bound an attacker who raises true-class evidence breaks when T > 0).
* **Undefended**: local logits are unbounded, so one window can always flip the sum: nothing is certified.

Arithmetic: every score and margin is computed in float64 from window sums of one integral image, so a window
that covers the grid sums to exactly the class's total (its masked score is exactly 0, and the tie is broken as
``argmax`` breaks it: lowest class index). A margin of exactly 0 certifies against a class of higher index
(the tie goes to the label) and not against one of lower index, as the prediction would break it.
``tests/test_certify.py`` attacks certified maps with an exhaustive local-logit adversary (the true class
removed or one of its cells raised, the other classes raised uniformly), and ``tests/test_certify_pixels.py``
a BagNet in pixel space at every patch location.
"""
from __future__ import annotations

import math

import torch

Window = tuple[int, int]


def window_size(patch_px: int, q: int, stride: int = 8) -> int:
    """Rows (and columns) of local logits one p x p patch can reach: ceil((p + q - 1) / stride)."""
    return math.ceil((patch_px + q - 1) / stride)


def affected(y: int, x: int, patch_px: int, q: int, n_rows: int, n_cols: int, stride: int = 8):
    """Row and column index ranges of the local logits a patch with top-left pixel (y, x) reaches."""
    def span(a, n):
        lo = max(0, (a - q) // stride + 1)
        hi = min(n - 1, math.ceil((a + patch_px) / stride) - 1)
        return range(lo, hi + 1)
    return span(y, n_rows), span(x, n_cols)


def grid_window(window: int | Window, grid: tuple[int, int]) -> Window:
    """The window of a reach ``window`` (one int: the same on both axes) on a grid of (rows, cols), per axis."""
    wh, ww = (window, window) if isinstance(window, int) else window
    return max(1, min(int(wh), grid[0])), max(1, min(int(ww), grid[1]))


def covers_grid(window: int | Window, grid: tuple[int, int]) -> bool:
    """Whether the window reaches every local logit of the grid: then nothing can be certified."""
    return grid_window(window, grid) == (grid[0], grid[1])


def clip(local: torch.Tensor, kind: str, c: float | None = None) -> tuple[torch.Tensor, float, float]:
    """Clipped local logits and the clip range (lo, hi): ``cbn`` = tanh(0.05 x - 1), ``relu`` = [0, c or inf)."""
    if kind == "cbn":
        return torch.tanh(0.05 * local - 1), -1.0, 1.0
    if kind == "relu":
        hi = math.inf if c is None else float(c)
        return local.clamp(0, hi), 0.0, hi
    raise ValueError(f"unknown clipping '{kind}'; valid: cbn, relu")


def integral(z: torch.Tensor) -> torch.Tensor:
    """Integral image of z [..., h, w', K] -> [..., h + 1, w' + 1, K] (a zero first row and column)."""
    s = z.cumsum(-3).cumsum(-2)
    return torch.nn.functional.pad(s, (0, 0, 1, 0, 1, 0))


def window_sums(z: torch.Tensor, window: int | Window) -> torch.Tensor:
    """Sums over every window of z [..., h, w', K] -> [..., h - wh + 1, w' - ww + 1, K] (window clamped to the
    grid). From one integral image: the window that covers the grid sums to exactly ``total(z)``."""
    wh, ww = grid_window(window, z.shape[-3:-1])
    s = integral(z)
    return s[..., wh:, ww:, :] - s[..., :-wh, ww:, :] - s[..., wh:, :-ww, :] + s[..., :-wh, :-ww, :]


def total(z: torch.Tensor) -> torch.Tensor:
    """Sum over the grid of z [..., h, w', K] -> [..., K], the integral image's last corner."""
    return integral(z)[..., -1, -1, :]


def beats_all(margin: torch.Tensor, label: int) -> bool:
    """Whether margins [..., K] (label's score minus each class's) keep ``label`` the argmax: > 0 against
    lower class indices, >= 0 against higher ones (argmax breaks ties to the lowest index)."""
    k = torch.arange(margin.shape[-1])
    lower, higher = k < label, k > label
    return bool((margin[..., lower] > 0).all() and (margin[..., higher] >= 0).all())


# ---------------------------------------------------------------- the defences: scores [..., K], argmax = prediction
def clipped_scores(local: torch.Tensor, kind: str = "cbn", c: float | None = None) -> torch.Tensor:
    """The clipped BagNet's class scores: clipped local logits summed over the grid (the mean's argmax)."""
    return total(clip(local, kind, c)[0])


def masking_scores(local: torch.Tensor, window: int | Window, threshold: float = 0.0,
                   c: float | None = None) -> torch.Tensor:
    """PatchGuard's robust masking (Algorithm 1), batched and differentiable: each class's evidence minus its
    highest-evidence window, when that window holds more than a share ``threshold`` of it."""
    z = clip(local, "relu", c)[0]
    g = total(z)
    top = window_sums(z, window).amax((-3, -2))
    return torch.where((g > 0) & (top > threshold * g), g - top, g)


def clipped_predict(local: torch.Tensor, kind: str = "cbn", c: float | None = None) -> int:
    return int(clipped_scores(local.double(), kind, c).argmax())


def masking_predict(local: torch.Tensor, window: int | Window, threshold: float = 0.0, c: float | None = None) -> int:
    return int(masking_scores(local.double(), window, threshold, c).argmax())


# ---------------------------------------------------------------- the certificates
def certify_clipping(local: torch.Tensor, label: int, window: int | Window, kind: str = "cbn",
                     c: float | None = None) -> bool:
    """Whether the clipped BagNet's prediction is ``label`` and stays it whatever one window holds."""
    z, lo, hi = clip(local.double(), kind, c)
    grid = z.shape[:2]
    wh, ww = grid_window(window, grid)
    if covers_grid(window, grid) or math.isinf(hi) or int(total(z).argmax()) != label:
        return False
    diff = z[..., label:label + 1] - z                           # [h, w', K]: y - t per local logit
    outside = total(diff) - window_sums(diff, (wh, ww))          # [nx, ny, K]
    return beats_all(outside - wh * ww * (hi - lo), label)


def certify_masking(local: torch.Tensor, label: int, window: int | Window, threshold: float = 0.0,
                    c: float | None = None) -> bool:
    """Robust masking's prediction is ``label`` (and so is the clipped sum's) and stays it whatever one window
    holds, for every window position.

    Bounds, for the attacker's window W (its clean cells replaced by anything >= 0), a = a class's clean
    evidence outside W, u = its evidence inside W after the attack, so its total is a + u:

    * a wrong class scores at most a / (1 - T). If a window M (sum m) is removed: m >= u (W is a window, or
      lies inside one), so a + u - m <= a. If none is: the largest window, which is at least u, is at most
      T (a + u), so u <= T (a + u), i.e. a + u <= a / (1 - T).
    * the true class scores at least a - b, b = the largest window sum of its clean map with W zeroed. If no
      window is removed it scores a + u >= a. If V is removed, its sum is (evidence in V and W) + (clean
      evidence in V outside W) <= u + b, so it scores a + u - sum(V) >= a - b. Whatever T is: by raising one
      cell of W the attacker can make a window that also covers clean cells outside W the largest and push it
      over the threshold. (PatchGuard's ``provable_masking`` subtracts b only when b exceeds T times the zeroed
      map's total: the attacker who zeroes W. An attacker who raises true-class evidence breaks that bound.)
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"detection threshold {threshold} outside [0, 1)")
    z = clip(local.double(), "relu", c)[0]
    grid = z.shape[:2]
    wh, ww = grid_window(window, grid)
    g = total(z)
    if covers_grid(window, grid) or int(g.argmax()) != label or masking_predict(local, (wh, ww), threshold, c) != label:
        return False
    sums = window_sums(z, (wh, ww))                              # [nx, ny, K]
    nx, ny = sums.shape[:2]
    upper = (g - sums) / (1 - threshold)                         # wrong classes, per attacker window
    own = z[..., label]
    kept = own.expand(nx, ny, *own.shape).clone()                # [nx, ny, h, w']: the true class, W zeroed
    for i in range(nx):
        for j in range(ny):
            kept[i, j, i:i + wh, j:j + ww] = 0
    best = window_sums(kept[..., None], (wh, ww)).amax((-3, -2))[..., 0]     # [nx, ny]
    lower = g[label] - sums[..., label] - best
    return beats_all(lower[..., None] - upper, label)


def worst_case(local: torch.Tensor, rows: range, cols: range, label: int, target: int,
               big: float = 1e4) -> torch.Tensor:
    """Raw local logits with ``rows`` x ``cols`` rewritten: the true class far below and ``target`` at ``big``
    (the worst case for clipping; masking's needs more: tests/patch_adversary.py)."""
    out = local.clone()
    out[rows.start:rows.stop, cols.start:cols.stop, label] = -big
    out[rows.start:rows.stop, cols.start:cols.stop, target] = big
    return out
