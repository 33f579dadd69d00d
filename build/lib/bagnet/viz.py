"""Figures for heatmaps and predictive patches. Functions return Figures; writing them is bagnet.io's job.

Every figure gets an explicit figsize and dpi, so saved without bbox_inches="tight" its pixel size is
figsize * dpi (tests rely on that).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
# Figure without pyplot: no global figure registry to leak, no GUI backend needed (Agg renders PNG).
from matplotlib.figure import Figure

from .constants import IMAGENET_MEAN, IMAGENET_STD
from .utils import denormalize

__all__ = ["to_rgb", "edge_map", "heatmap_figure", "compare_bagnets_figure", "patches_figure"]


def to_rgb(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """[B, 3, H, W] (or [3, H, W]) normalised -> float64 [B, H, W, 3] (or [H, W, 3]) in [0, 1], for imshow
    (:func:`bagnet.utils.denormalize` in the channels-last layout)."""
    return denormalize(images.detach().cpu().double(), mean, std).movedim(-3, -1).numpy()


def edge_map(rgb: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude of the grayscale image, scaled to [0, 1]."""
    g = rgb @ np.array([0.299, 0.587, 0.114])
    p = np.pad(g, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    mag = np.hypot(gx, gy)
    return mag / mag.max() if mag.max() > 0 else mag


def _show_heatmap(ax, h: np.ndarray, rgb: np.ndarray | None, percentile: float):
    # Symmetric limits around 0 so red = evidence for, blue = against; clip outliers so that one
    # extreme patch does not wash out the rest.
    v = float(np.percentile(np.abs(h), percentile)) or 1e-12
    im = ax.imshow(h, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    if rgb is not None and rgb.shape[:2] == h.shape:
        e = edge_map(rgb)
        e = np.clip(e / max(np.percentile(e, 90), 1e-12), 0, 1)   # emphasise the strongest edges
        overlay = np.zeros((*h.shape, 4))
        overlay[..., 3] = 0.6 * e                                  # black lines, alpha = edge strength
        ax.imshow(overlay, interpolation="nearest")
    return im


def _off(ax):
    ax.set_xticks([])
    ax.set_yticks([])


def _np(h) -> np.ndarray:
    return h.detach().cpu().double().numpy() if isinstance(h, torch.Tensor) else np.asarray(h, float)


def compare_bagnets_figure(images: torch.Tensor, heatmaps: Mapping[str, torch.Tensor],
                           titles: Sequence[str] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           percentile: float = 99.0, panel_inches: float = 2.0, dpi: int = 100) -> Figure:
    """One row per image: the image, then each model's heatmap [B, H, W] (e.g. BagNet-9/17/33), each with its
    colour bar (logits; red = evidence for the class, blue = against, symmetric per panel)."""
    rgb = to_rgb(images, mean, std)
    names = list(heatmaps)
    b, ncol = rgb.shape[0], 1 + len(names)
    fig = Figure(figsize=(panel_inches * ncol, panel_inches * b), dpi=dpi)
    axes = np.asarray(fig.subplots(b, ncol, squeeze=False))
    for i in range(b):
        axes[i, 0].imshow(rgb[i])
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
        for j, name in enumerate(names, 1):
            im = _show_heatmap(axes[i, j], _np(heatmaps[name][i]), rgb[i], percentile)
            axes[i, j].set_title(name, fontsize=8)
            fig.colorbar(im, ax=axes[i, j], fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
        for ax in axes[i]:
            _off(ax)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.05, hspace=0.15)
    return fig


def heatmap_figure(images: torch.Tensor, heatmaps: torch.Tensor, titles: Sequence[str] | None = None,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, percentile: float = 99.0,
                   panel_inches: float = 2.0, dpi: int = 100) -> Figure:
    """One row per image: the image and its heatmap [B, H, W] with the image's edges drawn over it."""
    return compare_bagnets_figure(images, {"heatmap": heatmaps}, titles, mean, std, percentile,
                                  panel_inches, dpi)


def patches_figure(result_for_class: Mapping[str, Mapping[str, torch.Tensor]], class_name: str,
                   class_names: Sequence[str] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   panel_inches: float = 1.2, dpi: int = 100) -> Figure:
    """Top row: the class's most predictive patches; bottom row: distractors from other classes.

    ``result_for_class`` is one entry of :func:`bagnet.patches.most_predictive_patches`; the logit
    for ``class_name`` is written under each patch (and the source label for distractors).
    """
    rows = [("class", f"most predictive for '{class_name}'"), ("distractor", "from other classes")]
    k = max(1, max(len(result_for_class[r]["logits"]) for r, _ in rows))
    fig = Figure(figsize=(panel_inches * k, panel_inches * 2 + 0.6), dpi=dpi)
    axes = np.asarray(fig.subplots(2, k, squeeze=False))
    for r, (kind, title) in enumerate(rows):
        d = result_for_class[kind]
        rgb = to_rgb(d["patches"], mean, std) if len(d["logits"]) else []
        for j in range(k):
            ax = axes[r, j]
            _off(ax)
            if j >= len(rgb):
                ax.set_axis_off()
                continue
            ax.imshow(rgb[j], interpolation="nearest")
            text = f"{float(d['logits'][j]):.2f}"
            if kind == "distractor":
                lab = int(d["label"][j])
                text += f"\n({class_names[lab] if class_names else lab})"
            ax.set_xlabel(text, fontsize=7)
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.12, top=0.9, wspace=0.1, hspace=0.6)
    return fig


def explain_image_figure(image: torch.Tensor, maps: Mapping[str, torch.Tensor], patches: torch.Tensor,
                         patch_scores: Sequence[float], title: str, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         percentile: float = 99.0, panel_inches: float = 2.4, dpi: int = 100) -> Figure:
    """One image explained: the image, one heatmap per entry of ``maps`` (e.g. predicted and true class;
    each with its colour bar: red = evidence for the class, blue = against), and the image's highest-scoring
    patches for the first entry with their logits."""
    rgb = to_rgb(image[None], mean, std)[0]
    k = len(patches)
    fig = Figure(figsize=(panel_inches * (1 + len(maps)) + 0.9 * max(k, 1), panel_inches + 0.7), dpi=dpi)
    grid = fig.add_gridspec(2, 1 + len(maps) + max(k, 1), height_ratios=[1, 1],
                            width_ratios=[1] * (1 + len(maps)) + [0.45] * max(k, 1))
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(rgb)
    ax.set_title("image", fontsize=8)
    _off(ax)
    for j, (name, h) in enumerate(maps.items(), 1):
        ax = fig.add_subplot(grid[:, j])
        im = _show_heatmap(ax, _np(h), rgb, percentile)
        ax.set_title(name, fontsize=8)
        _off(ax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    for j in range(k):
        ax = fig.add_subplot(grid[0, 1 + len(maps) + j])
        ax.imshow(to_rgb(patches[j][None], mean, std)[0], interpolation="nearest")
        ax.set_xlabel(f"{patch_scores[j]:.2f}", fontsize=7)
        _off(ax)
        if j == 0:
            ax.set_title(f"top patches ({next(iter(maps))})", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=9)
    return fig
