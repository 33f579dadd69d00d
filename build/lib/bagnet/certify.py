"""Certified robustness of BagNets to one adversarial square patch (any content, any location).

Threat model: the attacker replaces a p x p square of the image (anywhere inside it) by anything. A BagNet's
local logit (i, j) sees only the q x q window with top-left (8i, 8j), so a patch at (y, x) can change only the
windows with 8i in (y - q, y + p) and 8j in (x - q, x + p): at most w = ceil((p + q - 1) / 8) consecutive rows
and columns, i.e. one w x w window of the h x w' local-logit map (clamped at the border). Everything below is
a function of the local logits ``L`` [h, w', K] and that window size.

* **Clipped BagNet** (Zhang, Yuan, Mu & Wagner 2020): local logits clipped (``tanh(0.05 x - 1)``, their CBN,
  range (-1, 1); or ``[0, c]``), then averaged. Certified for label y if for every window position and every
  class t != y, the evidence difference y - t summed outside the window exceeds the most the window can
  change it: its area x (hi - lo). (PatchGuard's reference code checks only the runner-up class; all are
  checked here.)
* **PatchGuard robust masking** (Xiang et al. 2021, Algorithm 1 and its provable analysis, Algorithm 2):
  local logits clipped to [0, inf) (or [0, c]); for each class the w x w window with the most evidence is
  removed (with detection threshold T: only when it holds more than a share T of the class's evidence).
  Certified if, for every window position the attacker may own, an upper bound on every wrong class's
  masked evidence stays below a lower bound on the true class's.
* **Undefended**: local logits are unbounded, so one window can always flip the mean: nothing is certified.

Proof sketch (clipping, what :func:`certify_clipping` checks): after the attack, score_y - score_t =
sum_outside (y - t) + sum_inside (y' - t') with every inside term >= lo - hi; so the prediction stays y when
sum_outside (y - t) > area * (hi - lo) for every t. The attacker's window is some w x w window, so checking
every window position covers every patch location. ``tests/test_certify.py`` attacks the certified images
at every patch location with the worst-case local logits and with PGD in pixel space.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def clip(local: torch.Tensor, kind: str, c: float | None = None) -> tuple[torch.Tensor, float, float]:
    """Clipped local logits and the clip range (lo, hi): ``cbn`` = tanh(0.05 x - 1), ``relu`` = [0, c or inf)."""
    if kind == "cbn":
        return torch.tanh(0.05 * local - 1), -1.0, 1.0
    if kind == "relu":
        hi = math.inf if c is None else float(c)
        return local.clamp(0, hi), 0.0, hi
    raise ValueError(f"unknown clipping '{kind}'; valid: cbn, relu")


def window_sums(local: torch.Tensor, w: int) -> torch.Tensor:
    """Sums over every w x w window of local [..., h, w', K] -> [..., h - w + 1, w' - w + 1, K]."""
    x = local.movedim(-1, -3)                                     # [..., K, h, w']
    shape = x.shape
    s = F.avg_pool2d(x.reshape(-1, *shape[-3:]), w, stride=1, divisor_override=1)
    return s.reshape(*shape[:-2], *s.shape[-2:]).movedim(-3, -1)


def _fit(w: int, local: torch.Tensor) -> int:
    return max(1, min(w, local.shape[0], local.shape[1]))


def clipped_predict(local: torch.Tensor, kind: str = "cbn", c: float | None = None) -> int:
    return int(clip(local, kind, c)[0].mean((0, 1)).argmax())


def certify_clipping(local: torch.Tensor, label: int, w: int, kind: str = "cbn", c: float | None = None) -> bool:
    """Whether the clipped BagNet's prediction is ``label`` and stays it whatever one w x w window holds."""
    z, lo, hi = clip(local, kind, c)
    if int(z.mean((0, 1)).argmax()) != label or math.isinf(hi):
        return False
    w = _fit(w, z)
    diff = z[..., label:label + 1] - z                           # [h, w', K]: y - t per window
    outside = diff.sum((0, 1)) - window_sums(diff, w)            # [nx, ny, K]
    others = torch.ones(z.shape[-1], dtype=torch.bool)
    others[label] = False
    return bool((outside[..., others] > w * w * (hi - lo)).all())


def masking_predict(local: torch.Tensor, w: int, threshold: float = 0.0, c: float | None = None) -> int:
    """PatchGuard's robust masking (Algorithm 1): remove each class's highest-evidence w x w window."""
    z = clip(local, "relu", c)[0]
    w = _fit(w, z)
    g = z.sum((0, 1))
    top = window_sums(z, w).amax((0, 1))
    remove = (g > 0) & (top > threshold * g)
    return int(torch.where(remove, g - top, g).argmax())


def certify_masking(local: torch.Tensor, label: int, w: int, threshold: float = 0.0, c: float | None = None) -> bool:
    """PatchGuard's provable analysis (Algorithm 2) of robust masking, every attacker window at once."""
    z = clip(local, "relu", c)[0]
    w = _fit(w, z)
    g = z.sum((0, 1))
    if masking_predict(local, w, threshold, c) != label or int(g.argmax()) != label:
        return False
    sums = window_sums(z, w)                                     # [nx, ny, K]
    nx, ny = sums.shape[:2]
    bound = (g - sums) / (1 - threshold)                         # wrong classes: upper bounds
    own = z[..., label]
    masks = torch.ones(nx, ny, *own.shape)
    for i in range(nx):
        for j in range(ny):
            masks[i, j, i:i + w, j:j + w] = 0
    kept = own * masks                                           # [nx, ny, h, w']: the true class, window zeroed
    best = window_sums(kept.reshape(nx * ny, *own.shape, 1), w).amax((1, 2, 3)).reshape(nx, ny)
    total = kept.sum((2, 3))
    true_low = g[label] - sums[..., label] - torch.where(best > threshold * total, best, torch.zeros_like(best))
    others = torch.ones(z.shape[-1], dtype=torch.bool)
    others[label] = False
    return bool((true_low > bound[..., others].amax(-1)).all())


def worst_case(local: torch.Tensor, rows: range, cols: range, label: int, target: int,
               big: float = 1e4) -> torch.Tensor:
    """The strongest raw local logits an attacker owning ``rows`` x ``cols`` can set for ``target`` against
    ``label``: the true class far below and the target far above every clip range (exact for clipping)."""
    out = local.clone()
    out[rows.start:rows.stop, cols.start:cols.stop, label] = -big
    out[rows.start:rows.stop, cols.start:cols.stop, target] = big
    return out
