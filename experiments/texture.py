"""The paper's texturised images (Brendel & Bethge 2019, Sec. 4): accuracy on the same images clean, texturised by
Gatys et al.'s (2015) neural texture synthesis on VGG-19 (:mod:`experiments.texture_synthesis`) and cut into a g x g
grid of permuted tiles. Local statistics survive both manipulations, the global arrangement does not: a model that
counts local evidence keeps much of its accuracy.

Protocol: ``num_images`` seeded images of the split; every image texturised once (``steps`` L-BFGS iterations from
white noise, seeded per chunk), the same textures for every model; tiles as :func:`experiments.scrambling.
scramble_batch` (a derangement per image, seeded by its index). Texturised images are kept in chunks of ``chunk``
images by the suite's cache (``make reproduce-paper`` resumes a killed synthesis where it stopped); a chunk is
reused while the data, the images, the synthesis config, the texture model and ``texture_synthesis.py`` are unchanged.

Returns Result with
  tables: ``accuracy`` — model, condition (clean | texture (Gatys) | tiles gxg), n, top1/top5 with 95% bootstrap
          intervals, top5_rel (share of the clean top-5 kept), published top5 (experiments/published.yaml,
          section texture: clean and texturised, where a number is published)
  figures: ``accuracy`` (top-5 per model and condition), ``examples``, ``synthesis_loss`` (L-BFGS loss curves)
  raw: n_images, final synthesis losses, the texture model
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet.models.releases import pretrained_model
from bagnet.result import Result
from bagnet.stats import bootstrap_ci

from . import published
from .inputs import eval_indices, forward, load_batch, resolve_data, topk_correct
from .keys import ExperimentConfig, ranged, typed_cfg
from .registry import Experiment, register
from .scrambling import examples_figure, scramble_batch
from .texture_synthesis import GATYS_LAYERS, TextureConfig

TEXTURE = "texture (Gatys)"


@dataclass
class Config(ExperimentConfig):
    texture_model: dict[str, Any] = field(default_factory=lambda: {"name": "vgg19"})   # Gatys et al.: VGG-19 features
    num_images: Optional[int] = ranged(100, ge=1)
    steps: int = ranged(2000, ge=1)                  # Gatys et al. (2015): L-BFGS, maxiter 2000, memory 20
    layers: list[str] = field(default_factory=lambda: list(GATYS_LAYERS))   # conv1_1, pool1-4 of VGG-19
    history_size: int = ranged(20, ge=1)
    lr: float = ranged(1.0, gt=0)                    # torch L-BFGS initial step (strong-Wolfe line search)
    chunk: int = ranged(8, ge=1)                     # textures kept every `chunk` images (resume granularity)
    scramble_grid: int = ranged(4, ge=2)             # the tile variant: g x g tiles (4x4 = 56 px at 224)
    num_examples: int = ranged(4, ge=0)
    batch_size: int = ranged(32, ge=1)


def synthesis_code() -> str:
    """The synthesis code's digest: cached textures are made again when it changes."""
    return hashlib.sha256((Path(__file__).parent / "texture_synthesis.py").read_bytes()).hexdigest()[:12]


def textures(dataset, indices: list[int], c: Mapping, mean, std, cache) -> dict[str, torch.Tensor]:
    """The texturised images of ``indices``, chunk by chunk through ``cache`` (computed once, then reused)."""
    tc = TextureConfig(layers=tuple(c["layers"]), steps=c["steps"], lr=c["lr"], history_size=c["history_size"],
                       seed=c["seed"])
    extractor = None
    tex, loss, src, lab = [], [], [], []
    for start in range(0, len(indices), c["chunk"]):
        idx = indices[start: start + c["chunk"]]
        images, labels = load_batch(dataset, idx)

        def synthesize(images=images, start=start):
            nonlocal extractor
            if extractor is None:   # the texture model's features only: its classes are never used
                spec = {**c["texture_model"], "pretrained": True}
                vgg = pretrained_model(spec, SimpleNamespace(mean=mean, std=std, num_classes=1000),
                                       "experiments.texture.texture_model", c["weights_dir"])
                extractor = tc.extractor(vgg.features.to(c["device"]))
            t, h = replace(tc, seed=c["seed"] + start).synthesize(images.to(c["device"]), extractor, mean=mean, std=std)
            return {"textures": t.detach().cpu(), "loss": h}
        key = {"indices": idx, "synthesis": {k: c[k] for k in ("steps", "layers", "history_size", "lr", "seed")},
               "texture_model": c["texture_model"], "code": synthesis_code()}
        saved = cache(f"chunk_{start:06d}", key, synthesize)
        tex.append(saved["textures"]); loss.append(saved["loss"]); src.append(images); lab.append(labels)
    cat = (lambda xs: torch.cat(xs)) if indices else (lambda xs: torch.empty(0))
    return {"textures": cat(tex), "loss": cat(loss), "images": cat(src), "labels": cat(lab)}


def run(models: Mapping[str, nn.Module], data, cfg: Mapping, cache=None) -> Result:
    c = typed_cfg(Config, cfg, "experiments.texture")
    dataset, classes, mean, std = resolve_data(data)
    indices = eval_indices(len(dataset), c["num_images"], c["seed"])
    t = textures(dataset, indices, c, mean, std, cache or (lambda name, key, compute: compute()))
    g = c["scramble_grid"]
    conditions = {"clean": t["images"], TEXTURE: t["textures"],
                  f"tiles {g}x{g}": scramble_batch(t["images"], g, c["seed"], indices)}
    pub = published.texture_top5()
    rows = []
    for name, model in models.items():
        model = model.to(c["device"]).eval()
        hits = {}
        for cond, x in conditions.items():
            logits = forward(model, x.to(c["device"]), c["batch_size"]).float().cpu()
            hits[cond] = {k: topk_correct(logits, t["labels"], k).numpy().astype(float) for k in (1, 5)}
            row = {"model": name, "condition": cond, "n": len(x)}
            for k in (1, 5):
                ci = bootstrap_ci(hits[cond][k], seed=c["seed"])
                row.update({f"top{k}": ci.estimate, f"top{k}_lo": ci.lo, f"top{k}_hi": ci.hi})
            clean5 = hits["clean"][5].mean() if len(x) else float("nan")
            row["top5_rel"] = row["top5"] / clean5 if clean5 else float("nan")
            entry = pub.get(name, (None, None, ""))
            row["published top5"] = entry[0] if cond == "clean" else entry[1] if cond == TEXTURE else None
            rows.append(row)
    table = pd.DataFrame(rows)
    n_ex = min(c["num_examples"], len(indices))
    examples = {"original": t["images"][:n_ex], TEXTURE: t["textures"][:n_ex],
                f"tiles {g}x{g}": conditions[f"tiles {g}x{g}"][:n_ex]}
    loss = t["loss"].numpy() if len(t["loss"]) else np.zeros((0, c["steps"] + 1))
    return Result(tables={"accuracy": table},
                  figures={"accuracy": accuracy_figure(table), "examples": examples_figure(examples, mean, std),
                           "synthesis_loss": loss_figure(loss)},
                  raw={"n_images": len(indices), "final_loss": loss[:, -1].tolist() if len(loss) else [],
                       "texture_model": c["texture_model"]},
                  header="Accuracy on the same images: clean, texturised with Gatys et al. (2015) neural texture "
                         "synthesis on VGG-19 (experiments/texture_synthesis.py), and cut into a g x g grid of "
                         "permuted tiles. Published: VGG-16 top-5 clean -> texturised as quoted in the project's "
                         "issue, not verified against the paper text.",
                  summary=f"{len(indices)} images x {len(models)} models")


def accuracy_figure(table: pd.DataFrame):
    models, conds = list(dict.fromkeys(table["model"])), list(dict.fromkeys(table["condition"]))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(models), 3.6), constrained_layout=True)
    x, w = np.arange(len(models)), 0.8 / max(len(conds), 1)
    for i, cond in enumerate(conds):
        d = table[table.condition == cond].set_index("model").reindex(models)
        ax.bar(x + (i - (len(conds) - 1) / 2) * w, d["top5"], w, label=cond,
               yerr=[d["top5"] - d["top5_lo"], d["top5_hi"] - d["top5"]], capsize=2)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-5 accuracy (95% CI)")
    ax.legend(fontsize=8)
    return fig


def loss_figure(loss: np.ndarray):
    fig, ax = plt.subplots(figsize=(4, 3), constrained_layout=True)
    if len(loss):
        ax.semilogy(np.median(loss, 0), label="median")
        ax.fill_between(np.arange(loss.shape[1]), loss.min(0), loss.max(0), alpha=0.2, label="min-max")
        ax.legend(fontsize=8)
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel("normalised Gram loss")
    return fig


register(Experiment("texture", Config, run, cached=True, version=2,   # 2: a registered experiment (was paper's part)
                    summary="accuracy on Gatys-texturised and tile-scrambled images"))
