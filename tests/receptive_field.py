"""Receptive fields: measured from input gradients, and the analytic BagNet patch window."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["empirical_receptive_field", "patch_window"]


def empirical_receptive_field(model: nn.Module, input_size: tuple[int, int] = (224, 224),
                              unit: tuple[int, int] | None = None,
                              features_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
                              seed: int = 0) -> tuple[int, int]:
    """Height and width of the input region that one top-layer unit depends on.

    Backpropagates the unit's summed channels to a random input and returns the extent of the rows and
    columns with a non-zero gradient. Works on a float64 eval-mode copy (BN uses its running statistics,
    so units do not mix across the batch; the caller's model is left untouched). A random input keeps
    ReLUs from being all off, which would hide parts of the field.

    Args:
        model: the network; ``features_fn(model, x)`` must return a map [B, C, H', W'].
        input_size: (H, W) of the probe image; larger than the receptive field to see all of it.
        unit: (i, j) in the feature map; default the centre unit.
        features_fn: default ``model.forward_features`` if present (BagNets), else ``model``.
    """
    probe = copy.deepcopy(model).double().eval()
    if features_fn is None:
        features_fn = (lambda m, x: m.forward_features(x)) if hasattr(probe, "forward_features") else (lambda m, x: m(x))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, *input_size, dtype=torch.float64, generator=gen, requires_grad=True)
    fmap = features_fn(probe, x)
    if fmap.ndim != 4:
        raise ValueError(f"features_fn must return a [B, C, H, W] map, got shape {tuple(fmap.shape)}")
    i, j = unit if unit is not None else (fmap.shape[2] // 2, fmap.shape[3] // 2)
    fmap[0, :, i, j].sum().backward()
    touched = x.grad[0].abs().sum(0) > 0  # [H, W]
    rows = touched.any(1).nonzero().flatten()
    cols = touched.any(0).nonzero().flatten()
    if rows.numel() == 0:
        raise RuntimeError("the unit's gradient is zero everywhere (dead unit); try another seed or unit")
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def patch_window(i: int, j: int, q: int, stride: int = 8) -> tuple[int, int]:
    """Top-left input pixel (row0, col0) of the q x q window seen by BagNet unit (i, j).

    BagNet convolutions are unpadded and residuals are cropped at the bottom/right, so windows are
    top-left aligned: unit (i, j) sees rows ``stride*i .. stride*i + q - 1`` and columns
    ``stride*j .. stride*j + q - 1`` (stride 8 for the released models).
    """
    if q < 1 or stride < 1:
        raise ValueError(f"q and stride must be positive, got q={q}, stride={stride}")
    return stride * i, stride * j
