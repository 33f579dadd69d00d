"""Accuracy: top-1/top-5 of every model with 95% bootstrap intervals over images, paired contrasts between
models on the same images, and top-1 per class (by name).

The paper's ordering claim (BagNet-9 < BagNet-17 <= BagNet-33 < a CNN) is a set of paired contrasts: the
difference of top-1 between two models on the same test images, with a paired bootstrap interval over images
and a two-sided verdict (:func:`bagnet.verdicts.reading`: a difference supported or not shown). No forward passes: input = per-image predictions
(columns index, label, pred and top5_0..top5_4 or ``top5``, as the eval task writes them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bagnet.data.names import display_names
from bagnet.errors import ConfigError
from bagnet.result import Result
from bagnet.stats import bootstrap_ci, paired_bootstrap_ci
from bagnet.verdicts import reading

from . import published
from .keys import ExperimentConfig, ranged, typed_cfg
from .error_overlap import correctness
from .registry import Experiment, register


@dataclass
class Config(ExperimentConfig):
    # [model_a, model_b]: top-1 of a minus top-1 of b on the same images (e.g. [BagNet-17, BagNet-9])
    contrasts: list[list[str]] = field(default_factory=list)
    reference: Optional[str] = None       # and every other model minus this one
    n_boot: int = ranged(2000, ge=100)     # bootstrap resamples (fewer make the 95% interval itself noise)
    # a section of experiments/published.yaml (e.g. imagenet): its top-1/top-5 beside each model of that name
    published: Optional[str] = None


def run(predictions: Mapping[str, pd.DataFrame], classes, cfg: Mapping) -> Result:
    c = typed_cfg(Config, cfg, "experiments.accuracy")
    labels, _, top1, top5 = correctness(predictions)      # aligned by image index; same images, same labels
    names = list(predictions)
    pairs = [list(p) for p in c["contrasts"]]
    if c["reference"] is not None:
        pairs += [[m, c["reference"]] for m in names if m != c["reference"]]
    unknown = sorted({m for p in pairs for m in p} - set(names))
    if unknown or any(len(p) != 2 for p in pairs):
        raise ConfigError(f"experiments.accuracy: contrasts must be [model_a, model_b] pairs of {names}; "
                          f"unknown: {unknown}")
    rows = []
    for m in names:
        ci1 = bootstrap_ci(top1[m].astype(float), n_boot=c["n_boot"], seed=c["seed"])
        ci5 = bootstrap_ci(top5[m].astype(float), n_boot=c["n_boot"], seed=c["seed"])
        rows.append({"model": m, "n": len(top1[m]), "top1": ci1.estimate, "top1_lo": ci1.lo, "top1_hi": ci1.hi,
                     "top5": ci5.estimate, "top5_lo": ci5.lo, "top5_hi": ci5.hi})
    contrasts = []
    for a, b in pairs:
        ci = paired_bootstrap_ci(top1[a].astype(float), top1[b].astype(float), n_boot=c["n_boot"], seed=c["seed"])
        contrasts.append({"model": a, "minus": b, "metric": "top1", "difference": ci.estimate, "lo": ci.lo,
                          "hi": ci.hi, "verdict": reading(*ci)})
    shown = display_names(classes) if classes is not None else None
    per_class = []
    for k in sorted(set(labels.tolist())):
        row = {"class": classes[k] if classes is not None else k,
               "class_name": shown[k] if shown is not None else str(k), "n": int((labels == k).sum())}
        row.update({m: float(top1[m][labels == k].mean()) for m in names})
        per_class.append(row)
    table = pd.DataFrame(rows)
    header = ""
    if c["published"]:
        entries = published.section(c["published"])
        for metric in ("top1", "top5"):
            table[f"published {metric}"] = [entries[m][metric] if m in entries else None for m in table["model"]]
        table["source"] = [entries[m].source if m in entries else None for m in table["model"]]
        sources = sorted({entries[m].source for m in table["model"] if m in entries})
        header = f"Published (`experiments/published.yaml`, section {c['published']}): {'; '.join(sources) or 'none'}."
    return Result(header=header, tables={"accuracy": table, "contrasts": pd.DataFrame(contrasts), "per_class": pd.DataFrame(per_class)},
                  figures={"accuracy": accuracy_figure(table)},
                  raw={"n_images": int(len(labels)), "n_boot": c["n_boot"]},
                  summary=", ".join(f"{r['model']} {r['top1']:.3f}" for r in rows))


def accuracy_figure(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(table) + 1), 2.8))
    x = np.arange(len(table))
    for k, (metric, offset) in enumerate((("top1", -0.18), ("top5", 0.18))):
        err = [table[metric] - table[f"{metric}_lo"], table[f"{metric}_hi"] - table[metric]]
        ax.bar(x + offset, table[metric], width=0.36, yerr=err, capsize=2, label=metric)
        if f"published {metric}" in table:   # the published number as a black tick on its bar
            ax.scatter(x + offset, pd.to_numeric(table[f"published {metric}"], errors="coerce"), marker="_", s=120,
                       color="k", zorder=3, label=f"published {metric}")
    ax.set_xticks(x, table["model"], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def check(cfg: Mapping, classes, image_size) -> None:
    if cfg["published"] is not None:
        try:
            published.section(cfg["published"])
        except KeyError:
            raise ConfigError(f"experiments.accuracy.published: no section '{cfg['published']}' in "
                              "experiments/published.yaml") from None


register(Experiment("accuracy", Config, run, inputs="predictions", check=check,
                    models_named=lambda c: [m for pair in c["contrasts"] for m in pair] + [c["reference"]] * bool(c["reference"]),
                    summary="top-1/top-5 with intervals, paired contrasts, top-1 per class"))
