"""Signature 1: decisions survive destroying the global arrangement of an image.

Reproduces the paper's image-scrambling / texturised-image test (Brendel & Bethge 2019, Sec. 4,
"Comparing BagNets and high-performance DNNs", texturised images of Fig. 6) and the 15-Scene
reproducibility report's 4x4 tile scrambling: a bag-of-local-features model only counts local
evidence, so it should lose little accuracy when the parts of an image are rearranged.

Protocol (every evaluation image, every model, same manipulated images for all models):
  * clean: the image as the dataset gives it (normalised).
  * scrambled g x g (g in ``grids``, default 2, 4, 8; 4 is the report's setting): the image is cut
    into a g x g grid of tiles of size (H // g) x (W // g) and every tile moves: the permutation is a
    uniform derangement (no tile keeps its place; a uniform permutation of 2x2 tiles would be the
    identity once in 24 images). It is drawn from a generator seeded by (seed, dataset index):
    reproducible per image and the same as in Table 1's scrambled test (``scramble_batch``).
    If H or W is not divisible by g, the remainder strip (the last H mod g rows, W mod g columns)
    stays where it is, unscrambled: cropping would change the image size, which a CNN with a global
    receptive field reacts to on its own.
    ``remainder: black`` blackens that strip instead, as the 15-Scene report's notebook (Table 1), and
    ``tile_px`` adds the grid whose tiles are closest to that many pixels (the report's 56 px tiles).
  * texture ("image quilting", not the paper's procedure): the paper texturises with Gatys et al.'s
    neural texture synthesis (``experiments.texture_synthesis``, used by ``make reproduce-paper``); this
    cheap variant uses image quilting (Efros & Freeman 2001) without the minimum-error boundary cut:
    the output is tiled row by row with P x P patches (P = ``texture_patch``, default 33, at most half
    the image side) overlapping by P // 6; each patch is the best, by sum of squared differences in
    the overlap, of ``texture_candidates`` (default 8) patches drawn uniformly from the same image, and
    it is pasted over the overlap (a hard seam instead of a min-cut). Local statistics up to P px
    survive, the global layout does not. Deviation: quilting keeps whole P x P source patches, while
    neural texture synthesis only keeps feature statistics.

Metrics: top-1 / top-5 accuracy per model and condition, and both relative to clean ("share kept"),
each with a 95% percentile-bootstrap interval over images (the share kept resamples clean and
manipulated outcomes of the same images together).

Returns Result with
  tables: ``accuracy`` — model, condition, grid (1 for clean, g, NaN for texture), tile (px), and for
          k = 1, 5: top<k>, top<k>_lo, top<k>_hi, top<k>_rel, top<k>_rel_lo, top<k>_rel_hi; n
          ``contrasts`` (with ``contrasts``) — model, minus, condition, difference (share of clean top-1 above
          chance kept, model minus minus), lo, hi, verdict: a paired bootstrap over the same images, read
          one-sided (model expected to keep more)
  figures: ``accuracy_vs_grid`` (top-1 and top-5 vs g, texture as dashed line), ``examples``
  raw: accuracies per model and condition, n_images, tile sizes
"""
from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass, field
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet.errors import ConfigError
from bagnet.result import Result
from bagnet.viz import to_rgb
from bagnet.seeding import generator
from bagnet.stats import bootstrap_ci, derangement, kept_share_diff, paired_bootstrap_ci, ratio_ci
from bagnet.utils import jsonable
from bagnet.verdicts import reading

from .registry import Experiment, register
from .inputs import eval_indices, forward, iter_batches, prepare_model, resolve_data, topk_correct
from .keys import ExperimentConfig, IMAGE, ranged, typed_cfg


@dataclass
class Config(ExperimentConfig):
    grids: list[int] = ranged([2, 4, 8], ge=2, le=IMAGE)   # g x g tiles of at least 1 px
    texture: bool = True
    texture_patch: int = ranged(33, ge=2)                   # at most half the image side is used
    texture_candidates: int = ranged(8, ge=1)
    num_images: Optional[int] = ranged(512, ge=1)
    num_examples: int = ranged(4, ge=0)
    # named groups of classes, each also reported on its own (table accuracy_by_group), e.g. the probe's
    # local classes: scrambling must not hurt a BagNet there (a negative control)
    groups: dict[str, list[str]] = field(default_factory=dict)
    # the strip beyond g * (side // g) px: "keep" it in place, or "black" it (the 15-Scene report's notebook)
    remainder: str = "keep"
    # also the grid whose tiles are closest to this many px, if ``grids`` has no such grid (the report's 56 px
    # tiles at other image sizes: tiles smaller than q leave a BagNet-q no intact patch)
    tile_px: Optional[int] = ranged(None, ge=1)
    per_image: bool = False     # also table ``per_image``: every image's prediction in every condition
    # [model, minus] pairs (table ``contrasts``): the share of its clean top-1 above chance that model keeps under
    # each manipulation minus minus's, paired over the same images (the report's signature: a BagNet keeps more)
    contrasts: list[list[str]] = field(default_factory=list)


def group_ids(cfg: Mapping, classes) -> dict[str, list[int]]:
    """The class indices of each group of ``cfg['groups']`` (a typo is a config error)."""
    names, out = list(classes or []), {}
    for group, members in cfg["groups"].items():
        unknown = [c for c in members if c not in names]
        if unknown:
            raise ConfigError(f"experiments.scrambling.groups.{group}: {unknown} are not classes of the data")
        out[group] = [names.index(c) for c in members]
    return out


def within_correct(logits: torch.Tensor, labels: torch.Tensor, ids: list[int]) -> np.ndarray:
    """Per image: is the label the best of the group's classes (argmax over their logits only)? For a pair
    of classes made of the same parts this is the accuracy of telling them apart (chance 0.5)."""
    best = torch.tensor(ids)[logits[:, ids].float().argmax(1).cpu()]
    return (best == labels.cpu()).numpy()


def group_table(hits: dict, labels: np.ndarray, models, conds, cfg: Mapping, groups: dict[str, list[int]]) -> pd.DataFrame:
    """Per group of ``cfg['groups']``, on its images: top-1 and the within-group accuracy (argmax among the
    group's classes), each with the share of its clean value kept (95% CIs)."""
    rows = []
    for group, ids in groups.items():
        sel = np.isin(labels, ids)
        for m in models:
            for name, grid in conds:
                row = {"model": m, "group": group, "condition": name, "grid": grid, "n": int(sel.sum())}
                for col, key in (("top1", 1), ("within", group)):
                    acc = bootstrap_ci(hits[m, name, key][sel], seed=cfg["seed"])
                    kept = ratio_ci(hits[m, name, key][sel], hits[m, "clean", key][sel], seed=cfg["seed"])
                    row.update({col: acc.estimate, f"{col}_lo": acc.lo, f"{col}_hi": acc.hi, f"{col}_rel": kept.estimate,
                                f"{col}_rel_lo": kept.lo, f"{col}_rel_hi": kept.hi})
                rows.append(row)
    return pd.DataFrame(rows)


def scramble(images: torch.Tensor, g: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Move every tile of the g x g grid of each image ([B, C, H, W] or [C, H, W]) to another place.

    The permutation is a uniformly drawn derangement (no tile stays where it was: a permutation that
    left the image unchanged, or partly unchanged, would count as "scrambled"), one per image, drawn in
    batch order from ``generator``. Tiles are (H // g) x (W // g); the remainder rows/columns
    (H mod g, W mod g) stay in place. Pure: returns a new tensor.
    """
    single = images.dim() == 3
    x = images[None] if single else images
    b, c, h, w = x.shape
    th, tw = h // g, w // g
    if g < 2 or th == 0 or tw == 0:
        raise ConfigError(f"cannot scramble a {h}x{w} image as a {g}x{g} grid (need g >= 2 and tiles >= 1 px)")
    out = x.clone()
    core = x[:, :, : g * th, : g * tw]
    # [B, C, g, th, g, tw] -> [B, g*g, C, th, tw]: tile t = (row t // g, col t % g)
    tiles = core.reshape(b, c, g, th, g, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, th, tw)
    perm = torch.stack([derangement(g * g, generator) for _ in range(b)]).to(x.device)
    tiles = torch.gather(tiles, 1, perm.view(b, g * g, 1, 1, 1).expand_as(tiles))
    out[:, :, : g * th, : g * tw] = (tiles.reshape(b, g, g, c, th, tw).permute(0, 3, 1, 4, 2, 5)
                                     .reshape(b, c, g * th, g * tw))
    return out[0] if single else out


def texturise(image: torch.Tensor, patch: int, candidates: int = 8,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Image quilting without min-cut (see module doc) of one image [C, H, W]; same size as the input."""
    c, h, w = image.shape
    p = max(2, min(int(patch), h // 2, w // 2))
    ov = max(1, p // 6)
    step = p - ov
    n_r, n_c = math.ceil(max(h - ov, 1) / step), math.ceil(max(w - ov, 1) / step)
    canvas = torch.zeros(c, (n_r - 1) * step + p, (n_c - 1) * step + p, dtype=image.dtype)
    for r in range(n_r):
        for s in range(n_c):
            y0, x0 = r * step, s * step
            k = 1 if r == s == 0 else candidates
            ys = torch.randint(0, h - p + 1, (k,), generator=generator)
            xs = torch.randint(0, w - p + 1, (k,), generator=generator)
            cand = torch.stack([image[:, y: y + p, x: x + p] for y, x in zip(ys.tolist(), xs.tolist())])
            target = canvas[:, y0: y0 + p, x0: x0 + p]
            cost = torch.zeros(k, dtype=image.dtype)
            if s > 0:   # left overlap
                cost += ((cand[:, :, :, :ov] - target[:, :, :ov]) ** 2).sum((1, 2, 3))
            if r > 0:   # top overlap (the top-left corner counts twice; harmless for an argmin)
                cost += ((cand[:, :, :ov, :] - target[:, :ov, :]) ** 2).sum((1, 2, 3))
            canvas[:, y0: y0 + p, x0: x0 + p] = cand[int(cost.argmin())]
    return canvas[:, :h, :w].clone()


def tile_grid(image_size: int, grids, tile_px: int | None) -> int | None:
    """The grid whose tiles are closest to ``tile_px`` pixels on ``image_size`` px images, unless ``grids``
    has it already or it is a single tile (None)."""
    if not tile_px:
        return None
    g = round(image_size / tile_px)
    return g if g not in grids and g >= 2 else None


def _conditions(cfg, image_size: int | None) -> list[tuple[str, float]]:
    grids = list(cfg["grids"])
    extra = tile_grid(image_size, grids, cfg["tile_px"]) if image_size else None
    conds = [("clean", 1)] + [(f"scrambled_{g}x{g}", g) for g in grids + ([extra] if extra else [])]
    return conds + ([("texture", float("nan"))] if cfg["texture"] else [])


def _tile_label(name: str, grid, shape, cfg) -> str:
    """Tile size of a scrambling condition ("HxW"), patch side for texture."""
    if shape is None:
        return ""
    if name == "texture":
        return str(max(2, min(int(cfg["texture_patch"]), shape[0] // 2, shape[1] // 2)))
    return f"{shape[0] // int(grid)}x{shape[1] // int(grid)}"


def _manipulate(name: str, grid, images: torch.Tensor, idx: list[int], cfg, mean, std) -> torch.Tensor:
    if name == "clean":
        return images
    if name == "texture":
        return torch.stack([texturise(im, cfg["texture_patch"], cfg["texture_candidates"],
                                      generator(cfg["seed"], 2, i)) for im, i in zip(images, idx)])
    out = scramble_batch(images, int(grid), cfg["seed"], idx)
    return blacken_remainder(out, int(grid), mean, std) if cfg["remainder"] == "black" else out


def blacken_remainder(images: torch.Tensor, g: int, mean, std) -> torch.Tensor:
    """The rows and columns beyond g * (side // g) set to black (``-mean / std`` after normalisation), as the
    report's ``Image_Scrambling`` (tiles cut from a zero image of the full size). In place; returned."""
    black = (-torch.as_tensor(mean) / torch.as_tensor(std)).to(images.device, images.dtype).view(3, 1, 1)
    images[..., g * (images.shape[-2] // g):, :] = black
    images[..., :, g * (images.shape[-1] // g):] = black
    return images


def scramble_batch(images: torch.Tensor, g: int, seed: int, indices) -> torch.Tensor:
    """Scramble each image with its own generator, seeded by (seed, dataset index): the same
    permutation for an image whichever batch it is in (Table 1's scrambled test uses this too)."""
    return torch.stack([scramble(im[None], g, generator(seed, i))[0] for im, i in zip(images, indices)])


def run(models: dict[str, nn.Module], dataset, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    """Top-1/top-5 of every model on clean, g x g scrambled and texturised images (see module doc).

    Keys and defaults: :class:`Config`.
    """
    cfg = typed_cfg(Config, cfg, "experiments.scrambling")
    dataset, classes, mean, std = resolve_data(dataset, classes, mean, std)
    models = {k: prepare_model(m, cfg["device"], cfg["dtype"]) for k, m in models.items()}
    indices = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    conds = _conditions(cfg, _image_side(dataset, indices))
    groups = group_ids(cfg, classes)
    # per-image correctness: top-1, top-5 and, per group, within the group's classes
    hits = {(m, c, k): [] for m in models for c, _ in conds for k in (1, 5, *groups)}
    preds = {(m, c): [] for m in models for c, _ in conds}
    seen_labels: list[np.ndarray] = []
    examples: dict[str, torch.Tensor] = {}
    n_ex = min(cfg["num_examples"], len(indices))
    num_classes = len(classes or []) or 1      # the models' logits tell, once a batch has run
    shape = None
    for idx, images, labels in iter_batches(dataset, indices, cfg["batch_size"], cfg["progress"], "scrambling"):
        shape = tuple(images.shape[-2:])
        seen_labels.append(labels.numpy())
        for name, grid in conds:
            x = _manipulate(name, grid, images, idx, cfg, mean, std)
            if name not in examples:
                examples[name] = x[:n_ex]
            for m, model in models.items():
                logits = forward(model, x, cfg["batch_size"])
                num_classes = logits.shape[1]
                preds[m, name].append(logits.float().argmax(1).numpy())
                for k in (1, 5):
                    hits[m, name, k].append(topk_correct(logits, labels, k).numpy())
                for group, ids in groups.items():
                    hits[m, name, group].append(within_correct(logits, labels, ids))
    n = len(indices)
    hits = {key: np.concatenate(v).astype(float) if v else np.zeros(0) for key, v in hits.items()}
    rows = []
    for m in models:
        for name, grid in conds:
            tile = _tile_label(name, grid, shape, cfg)
            row = {"model": m, "condition": name, "grid": grid, "tile": tile}
            for k in (1, 5):
                acc = bootstrap_ci(hits[m, name, k], seed=cfg["seed"])
                kept = ratio_ci(hits[m, name, k], hits[m, "clean", k], seed=cfg["seed"])
                row.update({f"top{k}": acc.estimate, f"top{k}_lo": acc.lo, f"top{k}_hi": acc.hi,
                            f"top{k}_rel": kept.estimate, f"top{k}_rel_lo": kept.lo, f"top{k}_rel_hi": kept.hi})
            rows.append({**row, "n": n})
    table = pd.DataFrame(rows)
    tables = {"accuracy": table}
    if cfg["per_image"]:
        tables["per_image"] = per_image_table(preds, indices, np.concatenate(seen_labels) if seen_labels else
                                              np.zeros(0, int), models, conds)
    if cfg["contrasts"]:
        tables["contrasts"] = kept_contrasts(hits, cfg["contrasts"], [c for c, _ in conds], num_classes, cfg["seed"])
    if cfg["groups"]:
        tables["accuracy_by_group"] = group_table(hits, np.concatenate(seen_labels) if seen_labels else np.zeros(0),
                                                  models, conds, cfg, groups)
    raw = {"n_images": n, "image_size": list(shape or ()), "indices_head": indices[:20],
           "accuracy": {m: {r["condition"]: {"top1": r["top1"], "top5": r["top5"]}
                            for r in rows if r["model"] == m} for m in models}}
    report = [r for r in rows if r["condition"] == "scrambled_4x4"] or [r for r in rows if r["condition"] != "clean"]
    summary = "scrambling: " + " | ".join(f"{r['model']} {r['condition']} top-1 {r['top1']:.3f} "
                                          f"({r['top1_rel']:.2f} of clean)" for r in report)
    return Result(tables=tables,
                  figures={"accuracy_vs_grid": accuracy_figure(table),
                           "examples": examples_figure(examples, mean, std)},
                  raw=jsonable(raw), summary=summary)



def kept_contrasts(hits: Mapping, pairs, conditions, num_classes: int, seed: int) -> pd.DataFrame:
    """Per [model, minus] pair and manipulated condition: the share of its clean top-1 above chance that model keeps
    minus minus's, with a paired bootstrap 95% CI (the same resampled images for both models and both conditions),
    read one-sided (model expected to keep more). Above chance: two models that both fall to chance keep the same,
    so the less accurate one is not credited with keeping more."""
    rows, chance = [], 1.0 / max(num_classes, 1)
    for model, minus in pairs:
        for cond in [c for c in conditions if c != "clean"]:
            ci = paired_bootstrap_ci(np.stack([hits[model, cond, 1], hits[model, "clean", 1]], axis=1),
                                     np.stack([hits[minus, cond, 1], hits[minus, "clean", 1]], axis=1),
                                     partial(kept_share_diff, chance=chance), seed=seed)
            rows.append({"model": model, "minus": minus, "condition": cond, "difference": ci.estimate,
                         "lo": ci.lo, "hi": ci.hi, "verdict": reading(*ci, expected="greater")})
    return pd.DataFrame(rows, columns=["model", "minus", "condition", "difference", "lo", "hi", "verdict"])


def _image_side(dataset, indices) -> int | None:
    """The side of the images (the first one's width), for the grid of ``tile_px``."""
    return int(dataset[indices[0]][0].shape[-1]) if len(indices) else None


def per_image_table(preds: dict, indices, labels: np.ndarray, models, conds) -> pd.DataFrame:
    """One row per (model, condition, image): dataset index, label, top-1 prediction, correct."""
    frames = []
    for m in models:
        for name, grid in conds:
            pred = np.concatenate(preds[m, name]) if preds[m, name] else np.zeros(0, int)
            frames.append(pd.DataFrame({"model": m, "condition": name, "grid": grid, "index": indices,
                                        "label": labels, "pred": pred, "correct": pred == labels}))
    return pd.concat(frames, ignore_index=True)


def accuracy_figure(table: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, metric in zip(axes, ("top1", "top5")):
        for i, (m, df) in enumerate(table.groupby("model", sort=False)):
            color = f"C{i}"
            grid = df[df["grid"].notna()].sort_values("grid")
            ax.plot(grid["grid"], grid[metric], "o-", color=color, label=m)
            tex = df[df["condition"] == "texture"]
            if len(tex):
                ax.axhline(float(tex[metric].iloc[0]), color=color, ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(table["grid"].dropna().unique())
        ax.set_xticks(ticks, [("clean" if t == 1 else f"{int(t)}x{int(t)}") for t in ticks])
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("tile grid")
        ax.set_ylabel(f"{metric[:3]}-{metric[3:]} accuracy")
    axes[0].legend(fontsize=8, title="dashed: texture", title_fontsize=7)
    fig.suptitle("Accuracy on scrambled images")
    return fig


def examples_figure(examples: dict[str, torch.Tensor], mean, std):
    names = list(examples)
    n = min((len(v) for v in examples.values()), default=0)
    fig, axes = plt.subplots(max(n, 1), max(len(names), 1), figsize=(1.8 * max(len(names), 1), 1.8 * max(n, 1)),
                             squeeze=False, constrained_layout=True)
    for j, name in enumerate(names):
        axes[0, j].set_title(name.replace("scrambled_", ""), fontsize=9)
        for i in range(n):
            axes[i, j].imshow(to_rgb(examples[name][i], mean, std))
    for ax in axes.flat:
        ax.axis("off")
    return fig


def figures_from_tables(tables: Mapping[str, pd.DataFrame]) -> dict:
    """The figures that the saved tables alone determine (for scripts/render_results.py)."""
    return {"accuracy_vs_grid": accuracy_figure(tables["accuracy"])} if "accuracy" in tables else {}


def check(cfg: Mapping, classes, image_size) -> None:
    group_ids(cfg, classes)
    bad = [p for p in cfg["contrasts"] if len(p) != 2]
    if bad:
        raise ConfigError(f"experiments.scrambling.contrasts: {bad} are not [model, minus] pairs")
    if cfg["remainder"] not in ("keep", "black"):
        raise ConfigError(f"experiments.scrambling.remainder: '{cfg['remainder']}' is neither keep nor black")


register(Experiment("scrambling", Config, run, figures=lambda tables, raw: figures_from_tables(tables),
                    summary="signature 1: accuracy on clean, g x g tile-scrambled and texturised images",
                    check=check, models_named=lambda c: [m for pair in c["contrasts"] for m in pair]))
