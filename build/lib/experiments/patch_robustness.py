"""Certified robustness of BagNets to one adversarial square patch (``task=patch_robustness``).

For each BagNet and each patch size (``patch_px``, or ``patch_share`` of the image area), per test image:
clean and certified top-1 of the undefended BagNet (never certified: its local logits are unbounded), of
the clipped BagNet (CBN: ``tanh(0.05 x - 1)``, Zhang et al. 2020) and of PatchGuard's robust masking
without and with detection (threshold ``mask_threshold``; Xiang et al. 2021), the window size
``ceil((p + q - 1) / 8)`` from p, q and the feature stride (bagnet/certify.py has the proof sketch); and
beside the certificate an empirical attack: PGD inside the patch at the locations the certificate finds
weakest, against the clipped BagNet's score (the undefended model's mean of local logits for it).
Intervals: 95% bootstrap over images. Reference numbers (ImageNet, authors' weights, one 2% patch; the
patch-defense leaderboard): README "Certified robustness".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet.certify import (affected, certify_clipping, certify_masking, clip, clipped_predict, masking_predict,
                            window_size)
from bagnet.models import is_bagnet
from bagnet.result import Result
from bagnet.stats import bootstrap_ci

from .registry import Experiment, register
from .common import ExperimentConfig, eval_indices, iter_batches, resolve_data, typed_cfg

DEFENCES = ("undefended", "clipped", "masking", "masking_detect")


@dataclass
class Config(ExperimentConfig):
    patch_px: list[int] = field(default_factory=lambda: [8, 16])
    patch_share: list[float] = field(default_factory=list)     # of the image area, e.g. 0.02 = the leaderboard's
    mask_threshold: float = 0.2                                # detection threshold T of Mask-BN
    attack_images: int = 16                                    # PGD on this many images per model and patch
    attack_steps: int = 20
    attack_locations: int = 3
    num_images: Optional[int] = 256
    batch_size: int = 32


def patch_sizes(cfg: Mapping, image_px: int) -> list[int]:
    shares = [max(1, round(math.sqrt(s) * image_px)) for s in cfg["patch_share"]]
    return sorted(set(int(p) for p in cfg["patch_px"]) | set(shares))


def pgd_patch(model: nn.Module, image: torch.Tensor, label: int, p: int, locations, steps: int,
              lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """Whether PGD inside a p x p patch at one of ``locations`` flips the clipped BagNet away from ``label``."""
    for y, x in locations:
        delta = image[:, y:y + p, x:x + p].clone().requires_grad_(True)
        for _ in range(steps):
            img = image.clone()
            img[:, y:y + p, x:x + p] = delta
            z = clip(model.patch_logits(img[None])[0].permute(1, 2, 0), "cbn")[0].mean((0, 1))
            others = torch.cat([z[:label], z[label + 1:]])
            if others.max() > z[label]:
                return True
            (others.max() - z[label]).backward()
            with torch.no_grad():
                delta += 0.1 * (hi - lo).view(3, 1, 1) * delta.grad.sign()
                delta.copy_(torch.max(torch.min(delta, hi.view(3, 1, 1)), lo.view(3, 1, 1)))
            delta.grad = None
    return False


def run(models: Mapping[str, nn.Module], data, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    cfg = typed_cfg(Config, cfg, "signatures.patch_robustness")
    dataset, classes, mean, std = resolve_data(data, classes, mean, std)
    device = torch.device(cfg["device"])
    idx = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    m, s = torch.as_tensor(mean), torch.as_tensor(std)
    lo, hi = (0 - m) / s, (1 - m) / s                          # the patch's pixels stay valid images
    rows = []
    for name, model in ((n, mod) for n, mod in models.items() if is_bagnet(mod)):
        model = model.float().to(device).eval()
        q = model.patch_size
        for positions, images, labels in iter_batches(dataset, idx, cfg["batch_size"], cfg["progress"], desc=name):
            with torch.no_grad():
                local = model.patch_logits(images.to(device)).float().cpu().permute(0, 2, 3, 1)   # [B, h, w, K]
            for b, (i, y) in enumerate(zip(positions, labels.tolist())):
                size = images.shape[-1]
                for p in patch_sizes(cfg, size):
                    w = window_size(p, q)
                    row = {"model": name, "index": i, "label": y, "patch_px": p, "patch_share": p * p / size ** 2,
                           "window": w}
                    L = local[b]
                    row["undefended_clean"] = int(L.mean((0, 1)).argmax()) == y
                    row["undefended_certified"] = False
                    row["clipped_clean"] = clipped_predict(L, "cbn") == y
                    row["clipped_certified"] = certify_clipping(L, y, w, "cbn")
                    row["masking_clean"] = masking_predict(L, w) == y
                    row["masking_certified"] = certify_masking(L, y, w)
                    T = cfg["mask_threshold"]
                    row["masking_detect_clean"] = masking_predict(L, w, T) == y
                    row["masking_detect_certified"] = certify_masking(L, y, w, T)
                    rows.append(row)
        # the empirical attack, beside the certificate, on the first attack_images images
        attack = [r for r in rows if r["model"] == name and r["clipped_clean"]]
        for r in [r for r in attack if r["index"] in idx[: cfg["attack_images"]]]:
            image = torch.as_tensor(dataset[r["index"]][0]).to(device)
            size, p = image.shape[-1], r["patch_px"]
            n = (size - q) // 8 + 1
            corners = [(y, x) for y in range(0, size - p + 1, 8) for x in range(0, size - p + 1, 8)]
            with torch.no_grad():
                z = clip(model.patch_logits(image[None])[0].permute(1, 2, 0), "cbn")[0]
            evidence = z[..., r["label"]]                      # attack where the true class has most to lose

            def lost(y, x):
                rr, cc = affected(y, x, p, q, n, n)
                return float(evidence[rr.start:rr.stop, cc.start:cc.stop].sum())
            score = [lost(y, x) for y, x in corners]
            top = [corners[k] for k in np.argsort(score)[::-1][: cfg["attack_locations"]]]
            r["clipped_attacked"] = pgd_patch(model, image, r["label"], p, top, cfg["attack_steps"], lo.to(device),
                                              hi.to(device))
    per_image = pd.DataFrame(rows)
    summary_rows = []
    for (name, p), d in per_image.groupby(["model", "patch_px"], sort=False):
        for defence in DEFENCES:
            for kind in ("clean", "certified"):
                ci = bootstrap_ci(d[f"{defence}_{kind}"].to_numpy(float), seed=cfg["seed"])
                summary_rows.append({"model": name, "patch_px": p, "patch_share": d["patch_share"].iloc[0],
                                     "window": d["window"].iloc[0], "defence": defence, "metric": kind,
                                     "top1": ci.estimate, "lo": ci.lo, "hi": ci.hi, "n": len(d)})
        attacked = d["clipped_attacked"].dropna() if "clipped_attacked" in d else pd.Series(dtype=float)
        if len(attacked):
            ci = bootstrap_ci((~attacked.astype(bool)).to_numpy(float), seed=cfg["seed"])
            summary_rows.append({"model": name, "patch_px": p, "patch_share": d["patch_share"].iloc[0],
                                 "window": d["window"].iloc[0], "defence": "clipped", "metric": "survives PGD",
                                 "top1": ci.estimate, "lo": ci.lo, "hi": ci.hi, "n": len(attacked)})
    table = pd.DataFrame(summary_rows)
    attacked = per_image["clipped_attacked"] if "clipped_attacked" in per_image else pd.Series(dtype=object)
    broken = attacked.fillna(False).astype(bool)
    violations = int((broken & per_image["clipped_certified"]).sum()) if len(attacked) else 0
    return Result(tables={"patch_robustness": table, "per_image": per_image},
                  figures={"certified_vs_patch": certified_figure(table)},
                  raw={"certificate_violations": violations, "n_images": len(idx)},
                  summary=f"certified images broken by PGD: {violations} (must be 0)")


def certified_figure(table: pd.DataFrame):
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(4 * max(len(models), 1), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(axes[0], models):
        for i, defence in enumerate(DEFENCES):
            d = table[(table["model"] == name) & (table["defence"] == defence) & (table["metric"] == "certified")]
            ax.errorbar(d["patch_px"], d["top1"], yerr=[d["top1"] - d["lo"], d["hi"] - d["top1"]], marker="o",
                        capsize=3, label=defence, color=f"C{i}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("patch side (px)")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("certified top-1")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig



register(Experiment("patch_robustness", Config, run,
                    summary="certified robustness to one adversarial square patch"))
