"""Heatmaps and most predictive patches as Results (tables + figures), for the runner and the demo."""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import torch
import torch.nn as nn

from bagnet.data.names import display_names
from bagnet.errors import ConfigError
from bagnet.heatmaps import heatmap
from bagnet.models import is_bagnet
from bagnet.patches import most_predictive_patches
from bagnet.result import Result
from bagnet.viz import compare_bagnets_figure, patches_figure

from .common import eval_indices, load_batch


def _bagnets(models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    out = {k: m for k, m in models.items() if is_bagnet(m)}
    if not out:
        raise ConfigError(f"heatmaps and patches need a BagNet; got {', '.join(models)}")
    return out


def heatmaps_result(models: Mapping[str, nn.Module], dataset, classes: Sequence[str], mean, std,
                    num_images: int = 8, seed: int = 0, device="cpu", stride: int = 1) -> Result:
    """Exact heatmaps of the true class for ``num_images`` seeded test images, BagNets side by side."""
    bagnets = _bagnets(models)
    names = display_names(classes)
    idx = eval_indices(len(dataset), num_images, seed)
    images, labels = load_batch(dataset, idx)
    maps, rows = {}, []
    with torch.inference_mode():
        for name, model in bagnets.items():
            model = model.to(device).eval()
            h = heatmap(model, images.to(device), target=labels.to(device), stride=stride).float().cpu()
            maps[name] = h
            logits = model(images.to(device)).float().cpu()
            for k, i in enumerate(idx):
                pred = int(logits[k].argmax())
                rows.append({"model": name, "index": i, "label": classes[labels[k]], "label_name": names[labels[k]],
                             "pred": classes[pred], "pred_name": names[pred], "true_logit": float(logits[k, labels[k]]),
                             "heat_min": float(h[k].min()), "heat_max": float(h[k].max()),
                             "heat_mean": float(h[k].mean())})
    titles = [names[int(y)] for y in labels]
    fig = compare_bagnets_figure(images, maps, titles, mean, std)
    return Result(tables={"heatmaps": pd.DataFrame(rows)}, figures={"heatmaps": fig},
                  raw={"indices": idx, "stride": stride},
                  summary=f"{len(idx)} images x {len(bagnets)} BagNets")


def patches_result(models: Mapping[str, nn.Module], dataset, classes: Sequence[str], mean, std,
                   k: int = 8, per_class_images: int | None = None, device="cpu",
                   class_ids: Sequence[int] | None = None, max_per_image: int = 2) -> Result:
    """Per class: the k most predictive patches among its images and the k strongest distractors: distinct
    windows (no two overlapping in one image), at most ``max_per_image`` from one image."""
    name, model = next(reversed(_bagnets(models).items()))  # the largest-q BagNet when listed by q
    class_ids = list(range(len(classes))) if class_ids is None else list(class_ids)
    with torch.inference_mode():
        found = most_predictive_patches(model, dataset, class_ids, k=k, per_class_images=per_class_images,
                                        device=device, max_per_image=max_per_image)
    rows, figures, names = [], {}, display_names(classes)
    for c in class_ids:
        for kind in ("class", "distractor"):
            d = found[c][kind]
            for r in range(len(d["logits"])):
                source = int(d["label"][r])
                rows.append({"class": classes[c], "class_name": names[c], "kind": kind, "rank": r + 1,
                             "logit": float(d["logits"][r]), "image_index": int(d["image_index"][r]),
                             "source_label": classes[source], "source_name": names[source],
                             "row": int(d["location"][r][0]), "col": int(d["location"][r][1]),
                             "images_scanned": found[c]["scanned"][kind]})
        fig = patches_figure(found[c], names[c], names, mean, std)
        fig.suptitle(f"{name}: logit for '{names[c]}' ({found[c]['scanned']['class']} images of the class and "
                     f"{found[c]['scanned']['distractor']} of others scanned; <= {max_per_image} per image, "
                     "no overlaps)", fontsize=7)
        figures[f"patches_{classes[c]}"] = fig
    return Result(tables={"patches": pd.DataFrame(rows)}, figures=figures,
                  raw={"model": name, "k": k, "max_per_image": max_per_image,
                       "images_scanned": {classes[c]: found[c]["scanned"] for c in class_ids}},
                  summary=f"{name}: top-{k} patches and distractors for {len(class_ids)} classes")


def heatmaps_task(ctx) -> Result:
    """The ``heatmaps`` task: exact heatmaps of the BagNets among ``cfg.models`` on ``num_images`` images."""
    data = ctx.data
    return heatmaps_result(ctx.models(), data.split(ctx.cfg.split), data.classes, data.mean, data.std,
                           ctx.cfg.num_images, ctx.cfg.seed, ctx.device)


def patches_task(ctx) -> Result:
    """The ``patches`` task: per class, the most predictive patches among ``patches_images`` images of it."""
    data = ctx.data
    return patches_result(ctx.models(), data.split(ctx.cfg.split), data.classes, data.mean, data.std, k=8,
                          per_class_images=ctx.cfg.patches_images, device=ctx.device)
