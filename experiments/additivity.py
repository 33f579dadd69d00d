"""Signature 2: spatially distinct image manipulations do not interact.

Reproduces the paper's interaction test (Brendel & Bethge 2019, Sec. 4, "Spatially distinct image
manipulations do not interact", Fig. 5): occlude two patches A and B of an image separately and
together and compare the change of the true-class logit of the joint occlusion with the sum of the
single changes. A bag-of-local-features model sums local evidence, so far-apart parts cannot interact.

Protocol, for every evaluation image x with true class y and every patch size s (``patch_sizes``):
  * f(.) is the logit of y. Occluding a set S replaces its pixels by the occluder (``occluder``):
    'zero' = 0 in normalised space = the dataset's mean colour (the paper's choice, default),
    'gray' = pixel value 0.5, 'blur' = the image blurred with a Gaussian (sigma ``blur_sigma``).
  * Pairs of s x s patches A, B with top-left corners drawn uniformly inside the image are sorted into
    bins of their Chebyshev edge-to-edge gap d = max(|ya - yb| - s, |xa - xb| - s) (the number of
    pixels strictly between them along the more separated axis; d >= 0 means disjoint, 0 = touching).
    Per image, size and bin (``distance_bins`` are edges [lo, hi)), up to ``pairs_per_bin`` pairs
    are kept (seeded per image; bins that a patch size cannot reach in the image stay empty).
  * Delta(S) = f(x with S occluded) - f(x); interaction I = Delta(A u B) - Delta(A) - Delta(B).
    The forward passes are batched: one clean image, then A, B and A u B for all pairs of an image.

Reported per model, patch size and distance bin: Pearson r between Delta(A u B) and Delta(A) + Delta(B),
mean |I|, mean |Delta(A u B)|, and their ratio (normalised interaction; scale-free across models).

Exact condition for a BagNet-q. Its logit is the mean over units of a function of one q x q window,
rows 8i..8i+q-1 (likewise columns). Occluding A changes only windows that intersect A, so every
window that does not meet both A and B contributes f(AB) - f(A) - f(B) + f(x) = 0. Along one axis a
window [w, w+q-1] meets A = [a0, a1] and B = [b0, b1] (a1 < b0, gap d = b0 - a1 - 1) only if w <= a1 and
w + q - 1 >= b0, i.e. only if q - 1 >= b0 - a1 = d + 1. So no window meets both when d >= q - 1 on the
axis of the Chebyshev gap: for d >= q - 1 the interaction is exactly zero (up to float rounding).
Since only windows at multiples of 8 (and inside the image) exist, d >= q - 1 is sufficient, not
necessary: closer pairs may also not interact. Table column ``exact_zero_from`` gives q - 1 for
BagNets (NaN otherwise). Deviation from the paper: we report the absolute and normalised
interaction per distance bin rather than the paper's exact plotting; distances in px of our images.

Returns Result with
  tables: ``interaction`` — model, patch_size, bin, bin_lo, bin_hi, n_pairs, pearson_r, mean_abs_interaction,
          mean_abs_joint, normalized_interaction (with a 95% bootstrap interval over the pairs of the bin:
          _lo, _hi; pairs from one image are not independent, so the interval is optimistic), max_abs_interaction,
          exact_zero_from
  figures: ``interaction_vs_distance``, ``joint_vs_sum``
  raw: per-pair arrays (distance, joint, summed) per model and patch size
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet.errors import ConfigError
from bagnet.models import is_bagnet
from bagnet.result import Result
from bagnet.seeding import generator
from bagnet.stats import pearson, ratio_ci
from bagnet.utils import jsonable, unwrap

from .registry import Experiment, register
from .inputs import eval_indices, forward, iter_batches, mean_colour, occluder_fill, OCCLUDERS, prepare_model, resolve_data
from .keys import ExperimentConfig, IMAGE, ranged, typed_cfg

PLACEMENTS = ("random", "parts", "both")


@dataclass
class Config(ExperimentConfig):
    patch_sizes: list[int] = ranged([8, 16], ge=1, le=IMAGE, nonempty=True)   # occluder sides
    # edges of the gap bins [lo, hi) in px: increasing (check)
    distance_bins: list[int] = ranged([0, 4, 8, 16, 32, 64, 128], ge=0)
    pairs_per_bin: int = ranged(4, ge=1)
    num_images: Optional[int] = ranged(32, ge=1)
    occluder: str = ranged("zero", choices=OCCLUDERS)
    blur_sigma: float = ranged(4.0, gt=0)
    placement: str = ranged("random", choices=PLACEMENTS)  # random | parts (an occluder on each of two known parts) | both
    # parts: the data's ``parts(index)`` boxes (the synthetic probe and the controls know where their
    # parts are); random pairs almost never hit two sparse parts, so a global model looks additive


def check(cfg: Mapping, classes, image_size: int | None) -> None:
    """``distance_bins``: at least one bin, edges strictly increasing."""
    bins = list(cfg["distance_bins"])
    if len(bins) < 2 or any(b <= a for a, b in zip(bins, bins[1:])):
        raise ConfigError(f"experiments.additivity.distance_bins: must be at least two strictly increasing edges, "
                          f"got {bins}")


def chebyshev_gap(a: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
    """Edge-to-edge Chebyshev gap of s x s boxes with top-left corners a, b ([N, 2] as (y, x))."""
    return ((a - b).abs() - size).max(dim=-1).values


def sample_pairs(h: int, w: int, size: int, bins, per_bin: int, gen: torch.Generator,
                 draws: int = 8192) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``per_bin`` pairs per gap bin [lo, hi): returns corners A [N, 2], B [N, 2], bin id [N]."""
    hi = torch.tensor([h - size + 1, w - size + 1])
    a = (torch.rand(draws, 2, generator=gen) * hi).long()
    b = (torch.rand(draws, 2, generator=gen) * hi).long()
    d = chebyshev_gap(a, b, size)
    keep_a, keep_b, keep_bin = [], [], []
    for k, (lo, up) in enumerate(zip(bins[:-1], bins[1:])):
        sel = torch.nonzero((d >= lo) & (d < up)).flatten()[:per_bin]
        keep_a.append(a[sel]); keep_b.append(b[sel]); keep_bin.append(torch.full((len(sel),), k))
    return torch.cat(keep_a), torch.cat(keep_b), torch.cat(keep_bin)


def part_pairs(boxes, h: int, w: int, size: int, bins) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An s x s occluder centred on each of two known parts, for every pair of ``boxes`` ((y0, x0, y1, x1)),
    corners clamped into the image; pairs whose gap falls outside ``bins`` are dropped."""
    def corner(box):
        y0, x0, y1, x1 = box
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        return [min(max(cy - size // 2, 0), h - size), min(max(cx - size // 2, 0), w - size)]
    pairs = [(corner(p), corner(q)) for i, p in enumerate(boxes) for q in boxes[i + 1:]]
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    a, b = torch.tensor([p for p, _ in pairs]), torch.tensor([q for _, q in pairs])
    gap = chebyshev_gap(a, b, size)
    edges = torch.tensor(list(bins))
    bin_id = torch.bucketize(gap, edges, right=True) - 1
    keep = (bin_id >= 0) & (bin_id < len(bins) - 1)
    return a[keep], b[keep], bin_id[keep]


def occlude(image: torch.Tensor, fill: torch.Tensor, corners, size: int) -> torch.Tensor:
    """Copy of ``image`` with the s x s boxes at ``corners`` ((y, x) pairs) replaced by ``fill``."""
    out = image.clone()
    for y, x in corners:
        out[:, y: y + size, x: x + size] = fill[:, y: y + size, x: x + size]
    return out


def pair_effects(model: nn.Module, image: torch.Tensor, label: int, a: torch.Tensor, b: torch.Tensor,
                 size: int, fill: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Delta(A), Delta(B), Delta(A u B) of the ``label`` logit for pairs of corners a[k], b[k] (float64 out)."""
    batch = [image]
    for (ya, xa), (yb, xb) in zip(a.tolist(), b.tolist()):
        batch += [occlude(image, fill, [(ya, xa)], size), occlude(image, fill, [(yb, xb)], size),
                  occlude(image, fill, [(ya, xa), (yb, xb)], size)]
    f = forward(model, torch.stack(batch), batch_size)[:, label].double()
    f0, rest = f[0], f[1:].view(-1, 3)
    return {"delta_a": rest[:, 0] - f0, "delta_b": rest[:, 1] - f0, "delta_ab": rest[:, 2] - f0}


def run(models: dict[str, nn.Module], dataset, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    """Interaction of occluding two patches vs their distance (see module doc).

    Keys and defaults: :class:`Config`.
    """
    cfg = typed_cfg(Config, cfg, "experiments.additivity")
    check(cfg, classes, None)
    dataset, classes, mean, std = resolve_data(dataset, classes, mean, std)
    models = {k: prepare_model(m, cfg["device"], cfg["dtype"]) for k, m in models.items()}
    bins = list(cfg["distance_bins"])
    indices = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    placements = ["random", "parts"] if cfg["placement"] == "both" else [cfg["placement"]]
    if "parts" in placements and not hasattr(dataset, "parts"):
        raise ConfigError("experiments.additivity.placement=parts needs data that knows where its parts are "
                          "(a parts(index) method: the synthetic probe); use placement=random")
    # records[(model, size, placement)] -> lists of per-pair arrays
    rec = {(m, s, p): {"bin": [], "gap": [], "joint": [], "summed": []}
           for m in models for s in cfg["patch_sizes"] for p in placements}
    colour = mean_colour(dataset, indices) if cfg["occluder"] == "dataset_mean" else None
    for idx, images, labels in iter_batches(dataset, indices, 1, cfg["progress"], "additivity"):
        image, label = images[0], int(labels[0])
        fill = occluder_fill(image, cfg["occluder"], mean, std, cfg["blur_sigma"], colour)
        for size, placement in ((s, p) for s in cfg["patch_sizes"] for p in placements):
            if placement == "random":
                a, b, bin_id = sample_pairs(*image.shape[-2:], size, bins, cfg["pairs_per_bin"],
                                            generator(cfg["seed"], idx[0], size))
            else:
                a, b, bin_id = part_pairs(dataset.parts(idx[0]), *image.shape[-2:], size, bins)
            if not len(a):
                continue
            gap = chebyshev_gap(a, b, size)
            for m, model in models.items():
                e = pair_effects(model, image, label, a, b, size, fill, cfg["batch_size"])
                r = rec[m, size, placement]
                r["bin"].append(bin_id.numpy()); r["gap"].append(gap.numpy())
                r["joint"].append(e["delta_ab"].numpy()); r["summed"].append((e["delta_a"] + e["delta_b"]).numpy())
    rows, raw_pairs = {p: [] for p in placements}, {}
    for (m, size, placement), r in rec.items():
        if not r["bin"]:
            continue
        arr = {k: np.concatenate(v) for k, v in r.items()}
        raw_pairs[f"{m}/{size}" + ("" if placement == "random" else "/parts")] = {k: v.tolist() for k, v in arr.items()}
        q = getattr(unwrap(models[m]), "patch_size", None)
        for k, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
            sel = arr["bin"] == k
            if not sel.any():
                continue
            joint, summed = arr["joint"][sel], arr["summed"][sel]
            inter = np.abs(joint - summed)
            mean_joint = float(np.abs(joint).mean())
            nan = float("nan")
            ni = (ratio_ci(inter, np.abs(joint), seed=cfg["seed"]) if mean_joint > 0 and len(inter) > 1
                  else (nan, nan, nan))
            rows[placement].append({"model": m, "patch_size": size, "bin": f"[{lo}, {hi})", "bin_lo": lo, "bin_hi": hi,
                         "n_pairs": int(sel.sum()), "pearson_r": pearson(joint, summed),
                         "mean_abs_interaction": float(inter.mean()), "mean_abs_joint": mean_joint,
                         "normalized_interaction": float(inter.mean()) / mean_joint if mean_joint > 0 else nan,
                         "normalized_interaction_lo": ni[1], "normalized_interaction_hi": ni[2],
                         "max_abs_interaction": float(inter.max()),
                         "exact_zero_from": float(q - 1) if is_bagnet(models[m]) else float("nan")})
    columns = ["model", "patch_size", "bin", "bin_lo", "bin_hi", "n_pairs", "pearson_r", "mean_abs_interaction",
               "mean_abs_joint", "normalized_interaction", "normalized_interaction_lo", "normalized_interaction_hi",
               "max_abs_interaction", "exact_zero_from"]
    tables = {("interaction" if p == "random" else "interaction_parts"): pd.DataFrame(rows[p], columns=columns)
              for p in placements}
    table = tables.get("interaction", next(iter(tables.values())))
    far = table.groupby("model")["normalized_interaction"].apply(lambda s: s.iloc[-1] if len(s) else float("nan"))
    summary = "additivity (normalised interaction, farthest bin): " + " | ".join(
        f"{m} {v:.3g}" for m, v in far.items())
    return Result(tables=tables,
                  figures={"interaction_vs_distance": interaction_figure(table),
                           "joint_vs_sum": scatter_figure(raw_pairs, bins)},
                  raw=jsonable({"n_images": len(indices), "occluder": cfg["occluder"], "distance_bins": bins,
                               "pairs": raw_pairs}),
                  summary=summary)



def interaction_figure(table: pd.DataFrame):
    sizes = sorted(table["patch_size"].unique()) or [None]
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False, constrained_layout=True)
    for j, size in enumerate(sizes):
        df = table[table["patch_size"] == size]
        for i, (m, d) in enumerate(df.groupby("model", sort=False)):
            x = (d["bin_lo"] + np.minimum(d["bin_hi"], d["bin_lo"] * 2 + 1)) / 2  # bin centre, last bin clipped
            axes[0, j].plot(x, d["mean_abs_interaction"], "o-", color=f"C{i}", label=m)
            axes[1, j].plot(x, d["normalized_interaction"], "o-", color=f"C{i}", label=m)
            q = d["exact_zero_from"].iloc[0]
            if np.isfinite(q):
                for ax in axes[:, j]:
                    ax.axvline(q, color=f"C{i}", ls=":", lw=1)
        axes[0, j].set_title(f"{size} x {size} px patches")
        axes[1, j].set_xlabel("edge-to-edge gap (px)")
    axes[0, 0].set_ylabel("mean |interaction| (logit)")
    axes[1, 0].set_ylabel("|interaction| / mean |joint effect|")
    axes[0, 0].legend(fontsize=8, title="dotted: BagNet q-1", title_fontsize=7)
    return fig


def scatter_figure(raw_pairs: dict, bins):
    names = list(raw_pairs)
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.4 * max(len(names), 1), 3.4), squeeze=False,
                             constrained_layout=True)
    cmap = plt.get_cmap("viridis", max(len(bins) - 1, 1))
    for ax, name in zip(axes[0], names):
        r = raw_pairs[name]
        sc = ax.scatter(r["summed"], r["joint"], c=r["bin"], cmap=cmap, vmin=-0.5, vmax=len(bins) - 1.5, s=8)
        lim = [min(min(r["summed"]), min(r["joint"])), max(max(r["summed"]), max(r["joint"]))]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_title(name.replace("/", ", ") + " px", fontsize=9)
        ax.set_xlabel("Delta(A) + Delta(B)")
    axes[0, 0].set_ylabel("Delta(A u B)")
    if names:
        cb = fig.colorbar(sc, ax=axes[0, -1])
        cb.set_ticks(range(len(bins) - 1), labels=[f"[{lo},{hi})" for lo, hi in zip(bins[:-1], bins[1:])])
        cb.set_label("gap bin (px)")
    return fig


def figures_from_tables(tables: Mapping[str, pd.DataFrame]) -> dict:
    """The figures that the saved tables alone determine (for scripts/render_results.py)."""
    return {"interaction_vs_distance": interaction_figure(tables["interaction"])} if "interaction" in tables else {}


register(Experiment("additivity", Config, run, per_model=True, version=2, check=check,   # 2: occluders on known parts
                    figures=lambda tables, raw: {**figures_from_tables(tables),
                                                 "joint_vs_sum": scatter_figure(raw["pairs"], raw["distance_bins"])},
                    summary="signature 2: interaction of two occluded patches vs their distance"))
