"""Certified robustness to one adversarial square patch (``task=patch_robustness``).

For each model and each patch size (``patch_px``, or ``patch_share`` of the image area), per test image: clean
and certified top-1 of every defence in ``defences``. BagNets: the undefended BagNet (never certified: its
local logits are unbounded), the clipped BagNet (CBN: ``tanh(0.05 x - 1)``, Zhang et al. 2020) and PatchGuard's
robust masking without and with detection (threshold ``mask_threshold``; Xiang et al. 2021, with the sound
bound of bagnet/certify.py), on the window ``ceil((p + q - 1) / 8)`` per axis of the local-logit grid. Any
model (BagNets and CNNs): PatchCleanser's double masking (Xiang et al. 2022; bagnet/patchcleanser.py,
``cleanser_masks`` masks per axis; the forwards that decide its answers, ``patchcleanser.answer_maps``), whose cost
(forwards and seconds per image, beside the K (K + 1) / 2 of every pair) is its own table. Beside the
certificates an empirical attack on each BagNet defence: PGD inside the patch at the locations where the true
class has most to lose, against the defence's own scores; a certified image it flips is a
``certificate_violation``. Intervals: 95% bootstrap over images. Reference numbers (ImageNet, one 2% patch;
the patch-defense leaderboard): README "Certified robustness".
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet import patchcleanser
from bagnet.certify import (affected, certify_clipping, certify_masking, clip, clipped_predict, clipped_scores,
                            masking_predict, masking_scores, window_size)
from bagnet.errors import ConfigError
from bagnet.models import is_bagnet
from bagnet.result import Result
from bagnet.stats import bootstrap_ci

from .registry import Experiment, register
from .inputs import eval_indices, iter_batches, resolve_data
from .keys import ExperimentConfig, IMAGE, ranged, typed_cfg

DEFENCES = ("undefended", "clipped", "masking", "masking_detect", "patchcleanser")
BAGNET_DEFENCES = ("clipped", "masking", "masking_detect")        # from local logits: BagNets only


@dataclass
class Config(ExperimentConfig):
    patch_px: list[int] = ranged([8, 16], ge=1, lt=IMAGE)     # patch sides; a patch as large as the image hides it
    patch_share: list[float] = ranged([], gt=0, lt=1)         # of the image area, e.g. 0.02 = the leaderboard's
    defences: list[str] = ranged(list(DEFENCES), choices=DEFENCES, nonempty=True)
    mask_threshold: float = ranged(0.2, ge=0, lt=1)           # detection threshold T of Mask-BN (a share of evidence)
    cleanser_masks: int = ranged(6, ge=2)                     # PatchCleanser's masks per axis (the paper's k = 6)
    cleanser_images: Optional[int] = ranged(None, ge=1)       # PatchCleanser on a seeded random n of them (None: all)
    attack_images: int = ranged(16, ge=0)                     # PGD on this many images per model and patch (0: none)
    attack_steps: int = ranged(20, ge=1)
    attack_locations: int = ranged(3, ge=1)
    num_images: Optional[int] = ranged(256, ge=1)
    batch_size: int = ranged(32, ge=1)


def check(cfg: Mapping, classes, image_size: int | None) -> None:
    """At least one patch size, and every patch (``patch_share``'s too) smaller than the image."""
    if not cfg["patch_px"] and not cfg["patch_share"]:
        raise ConfigError("experiments.patch_robustness.patch_px: no patch size (patch_px and patch_share are both "
                          "empty)")
    if image_size is not None:
        large = [s for s in cfg["patch_share"] if max(1, round(math.sqrt(s) * image_size)) >= image_size]
        if large:
            raise ConfigError(f"experiments.patch_robustness.patch_share: {large} give a patch as large as the "
                              f"{image_size} px image (data.image_size); must be below its area")


def sample(idx: list[int], n: int | None, seed: int) -> set[int]:
    """A seeded random ``n`` of the evaluated images ``idx`` (all when n is None): not the first n, which on a
    dataset stored class by class (15-Scene, ImageNet folders) are one class."""
    return {idx[i] for i in eval_indices(len(idx), n, seed)}


def patch_sizes(cfg: Mapping, image_px: int) -> list[int]:
    shares = [max(1, round(math.sqrt(s) * image_px)) for s in cfg["patch_share"]]
    return sorted(set(int(p) for p in cfg["patch_px"]) | set(shares))


def defence_scores(defence: str, window: int, threshold: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A BagNet defence's class scores from local logits [..., h, w', K], differentiable (PGD's objective)."""
    if defence == "clipped":
        return lambda L: clipped_scores(L, "cbn")
    return lambda L: masking_scores(L, window, threshold if defence == "masking_detect" else 0.0)


def bagnet_answers(L: torch.Tensor, y: int, window: int, threshold: float, defences) -> dict:
    """Clean (defended prediction is y) and certified per BagNet defence, from one image's local logits."""
    out = {}
    if "clipped" in defences:
        out["clipped_clean"] = clipped_predict(L, "cbn") == y
        out["clipped_certified"] = certify_clipping(L, y, window, "cbn")
    for name, T in (("masking", 0.0), ("masking_detect", threshold)):
        if name in defences:
            out[f"{name}_clean"] = masking_predict(L, window, T) == y
            out[f"{name}_certified"] = certify_masking(L, y, window, T)
    return out


def pgd_patch(model: nn.Module, image: torch.Tensor, label: int, p: int, locations, steps: int,
              lo: torch.Tensor, hi: torch.Tensor, scores: Callable) -> bool:
    """Whether PGD inside a p x p patch at one of ``locations`` flips the defended BagNet away from ``label``."""
    for y, x in locations:
        delta = image[:, y:y + p, x:x + p].clone().requires_grad_(True)
        for _ in range(steps):
            img = image.clone()
            img[:, y:y + p, x:x + p] = delta
            z = scores(model.patch_logits(img[None])[0].permute(1, 2, 0))
            if int(z.argmax()) != label:
                return True
            others = torch.cat([z[:label], z[label + 1:]])
            (others.max() - z[label]).backward()
            with torch.no_grad():
                delta += 0.1 * (hi - lo).view(3, 1, 1) * delta.grad.sign()
                delta.copy_(torch.max(torch.min(delta, hi.view(3, 1, 1)), lo.view(3, 1, 1)))
            delta.grad = None
    return False


def weakest_corners(evidence: torch.Tensor, image_hw, p: int, q: int, k: int) -> list[tuple[int, int]]:
    """The k patch corners (on the 8 px grid) whose reached local logits hold the most true-class evidence."""
    (H, W), (h, w) = image_hw, evidence.shape
    corners = [(y, x) for y in range(0, H - p + 1, 8) for x in range(0, W - p + 1, 8)]

    def lost(y, x):
        rr, cc = affected(y, x, p, q, h, w)
        return float(evidence[rr.start:rr.stop, cc.start:cc.stop].sum())
    score = [lost(y, x) for y, x in corners]
    return [corners[i] for i in np.argsort(score, kind="stable")[::-1][:k]]


def attack(model, dataset, rows: list[dict], cfg: Mapping, defences, device, lo, hi) -> None:
    """PGD against each BagNet defence on the rows of ``attack_images`` sampled images that it gets right."""
    if not defences:
        return
    q = model.patch_size
    for r in rows:
        image = torch.as_tensor(dataset[r["index"]][0]).to(device)
        p = r["patch_px"]
        with torch.no_grad():
            local = model.patch_logits(image[None])[0].permute(1, 2, 0)
        for defence in defences:
            if not r[f"{defence}_clean"]:
                continue
            kind = "cbn" if defence == "clipped" else "relu"
            top = weakest_corners(clip(local, kind)[0][..., r["label"]], image.shape[-2:], p, q, cfg["attack_locations"])
            r[f"{defence}_attacked"] = pgd_patch(model, image, r["label"], p, top, cfg["attack_steps"], lo, hi,
                                                 defence_scores(defence, window_size(p, q), cfg["mask_threshold"]))


def run(models: Mapping[str, nn.Module], data, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    cfg = typed_cfg(Config, cfg, "experiments.patch_robustness")
    check(cfg, classes, None)
    dataset, classes, mean, std = resolve_data(data, classes, mean, std)
    device = torch.device(cfg["device"])
    idx = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    lo, hi = ((0 - m) / s).to(device), ((1 - m) / s).to(device)      # the patch's pixels stay valid images
    T, wanted = cfg["mask_threshold"], cfg["defences"]
    cleanser_idx = sample(idx, cfg["cleanser_images"], cfg["seed"]) if "patchcleanser" in wanted else set()
    rows, cost = [], []
    for name, model in models.items():
        bagnet = is_bagnet(model)
        model = model.float().to(device).eval()
        defences = [d for d in BAGNET_DEFENCES if d in wanted] if bagnet else []
        seconds: dict[int, float] = {}
        forwards: dict[int, int] = {}
        for positions, images, labels in iter_batches(dataset, idx, cfg["batch_size"], cfg["progress"], desc=name):
            images = images.to(device)
            cleansed = [b for b, i in enumerate(positions) if i in cleanser_idx]
            with torch.no_grad():
                local = model.patch_logits(images).cpu().permute(0, 2, 3, 1) if bagnet else None
                logits = local.double().mean((1, 2)) if bagnet else model(images).double().cpu()
            hw = tuple(images.shape[-2:])
            for p in patch_sizes(cfg, hw[1]):
                masks, maps = patchcleanser.mask_set(hw, p, cfg["cleanser_masks"]), {}
                if cleansed:
                    start = time.perf_counter()
                    answers, spent = patchcleanser.answer_maps(model, images[cleansed],
                                                               [int(labels[b]) for b in cleansed], masks,
                                                               cfg["batch_size"] * 8)
                    maps = dict(zip(cleansed, answers))
                    seconds[p] = seconds.get(p, 0.0) + time.perf_counter() - start
                    forwards[p] = forwards.get(p, 0) + spent
                for b, (i, y) in enumerate(zip(positions, labels.tolist())):
                    row = {"model": name, "index": i, "label": y, "patch_px": p, "patch_share": p * p / (hw[0] * hw[1]),
                           "window": window_size(p, model.patch_size) if bagnet else None,
                           "undefended_clean": int(logits[b].argmax()) == y, "undefended_certified": False}
                    if bagnet:
                        row.update(bagnet_answers(local[b], y, row["window"], T, defences))
                    if b in maps:
                        row["patchcleanser_clean"] = patchcleanser.double_masking(maps[b]) == y
                        row["patchcleanser_certified"] = patchcleanser.certify(maps[b], y, masks)
                    rows.append(row)
        for p, sec in seconds.items():
            k = len(patchcleanser.mask_set(hw, p, cfg["cleanser_masks"]))
            cost.append({"model": name, "patch_px": p, "defence": "patchcleanser", "masks": k,
                         "forwards_per_image": forwards[p] / len(cleanser_idx), "all_pairs": k * (k + 1) // 2,
                         "seconds_per_image": sec / len(cleanser_idx), "n": len(cleanser_idx)})
        first = sample(idx, cfg["attack_images"], cfg["seed"])
        attack(model, dataset, [r for r in rows if r["model"] == name and r["index"] in first], cfg, defences, device,
               lo, hi)
    per_image = pd.DataFrame(rows)
    table = summary_table(per_image, cfg["seed"])
    tables = {"patch_robustness": table, "per_image": per_image, "cost": pd.DataFrame(cost)}
    if cleanser_idx and len(cleanser_idx) < len(idx):          # every defence on PatchCleanser's images
        tables["same_images"] = summary_table(per_image[per_image["index"].isin(cleanser_idx)], cfg["seed"])
    violations = {d: int((per_image[f"{d}_attacked"].eq(True) & per_image[f"{d}_certified"].eq(True)).sum())
                  for d in BAGNET_DEFENCES if f"{d}_attacked" in per_image}
    total = sum(violations.values())
    return Result(tables=tables, figures={"certified_vs_patch": certified_figure(table)},
                  raw={"certificate_violations": total, "violations_by_defence": violations, "n_images": len(idx)},
                  summary=f"certified images broken by PGD: {total} (must be 0)")


def summary_table(per_image: pd.DataFrame, seed: int) -> pd.DataFrame:
    out = []
    for (name, p), d in per_image.groupby(["model", "patch_px"], sort=False):
        cell = {"model": name, "patch_px": p, "patch_share": d["patch_share"].iloc[0], "window": d["window"].iloc[0]}
        for defence in DEFENCES:
            for kind in ("clean", "certified"):
                col = f"{defence}_{kind}"
                if col in d and d[col].notna().any():
                    ci = bootstrap_ci(d[col].dropna().to_numpy(float), seed=seed)
                    out.append({**cell, "defence": defence, "metric": kind, "top1": ci.estimate, "lo": ci.lo,
                                "hi": ci.hi, "n": int(d[col].notna().sum())})
        for defence in BAGNET_DEFENCES:
            attacked = d[f"{defence}_attacked"].dropna() if f"{defence}_attacked" in d else pd.Series(dtype=float)
            if len(attacked):
                ci = bootstrap_ci((~attacked.astype(bool)).to_numpy(float), seed=seed)
                out.append({**cell, "defence": defence, "metric": "survives PGD", "top1": ci.estimate, "lo": ci.lo,
                            "hi": ci.hi, "n": len(attacked)})
    return pd.DataFrame(out)


def certified_figure(table: pd.DataFrame):
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4 * max(len(models), 1), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], models):
        for i, defence in enumerate(DEFENCES):
            d = table[(table["model"] == name) & (table["defence"] == defence) & (table["metric"] == "certified")]
            if len(d):
                ax.errorbar(d["patch_px"], d["top1"], yerr=[d["top1"] - d["lo"], d["hi"] - d["top1"]], marker="o",
                            capsize=3, label=defence, color=f"C{i}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("patch side (px)")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("certified top-1")
    handles = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    axes[0, -1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


register(Experiment("patch_robustness", Config, run, version=2, check=check,
                    summary="certified robustness to one adversarial square patch (BagNet defences, PatchCleanser)"))
