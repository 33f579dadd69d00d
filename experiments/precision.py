"""How much numerical precision changes a model's answers (``task=precision``).

Each model is evaluated in fp32 (the reference: TF32 off) and in every other mode of ``modes``:
``bf16`` (autocast, CPU or CUDA), ``fp16`` (autocast, CUDA only) and ``tf32`` (fp32 tensors, TF32 matmuls and
convolutions, CUDA only); a mode the device cannot run is listed as skipped, not silently dropped. Per mode:
top-1 / top-5 with 95% bootstrap intervals, their paired difference to fp32 over the same images, how many
images change their predicted class, the largest logit deviation from fp32 (absolute and relative to the
largest fp32 logit), and for BagNets the largest deviation of the exact heatmap (``heatmap_images`` images,
predicted class). Published reference for the authors' BagNet-33 on ImageNet (berenslab/bagnetsv2, quoted
in results/paper/README.md): fp32 66.70 / 87.00, TF32 64.23 / 85.31, fp16 57.96 / 80.34 top-1 / top-5.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from bagnet.engine import tf32
from bagnet.errors import ConfigError
from bagnet.heatmaps import heatmap
from bagnet.models import is_bagnet
from bagnet.result import Result
from bagnet.stats import bootstrap_ci, paired_bootstrap_ci

from .registry import Experiment, register
from .inputs import eval_indices, iter_batches, resolve_data, topk_correct
from .keys import ExperimentConfig, ranged, typed_cfg

MODES = ("fp32", "bf16", "fp16", "tf32")


@dataclass
class Config(ExperimentConfig):
    modes: list[str] = ranged(list(MODES), choices=MODES, nonempty=True)
    heatmap_images: int = ranged(4, ge=0)                 # BagNets: heatmap deviation on this many images (0: none)
    num_images: Optional[int] = ranged(None, ge=1)        # None: the whole split


def runnable(mode: str, device: torch.device) -> bool:
    return mode in ("fp32", "bf16") or device.type == "cuda"


def check(cfg: Mapping, classes, image_size: int | None) -> None:
    """At least one mode of ``modes`` must run on the device (the others are listed as skipped)."""
    device = torch.device(cfg["device"])
    if not any(runnable(m, device) for m in cfg["modes"]):
        raise ConfigError(f"experiments.precision.modes: none of {', '.join(cfg['modes'])} can run on {device.type} "
                          "(fp16 and tf32 need CUDA); add fp32 or bf16, or run on a GPU")


@contextlib.contextmanager
def precision_mode(mode: str, device: torch.device):
    """fp32 with TF32 off (the reference), bf16/fp16 autocast, or fp32 tensors with TF32 kernels."""
    with tf32(mode == "tf32"):
        if mode in ("bf16", "fp16"):
            with torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16):
                yield
        else:
            yield


@torch.no_grad()
def logits_in(model: nn.Module, dataset, indices, mode: str, device, batch_size: int, progress: bool):
    out, labels = [], []
    for _, images, y in iter_batches(dataset, indices, batch_size, progress, desc=mode):
        with precision_mode(mode, device):
            out.append(model(images.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def run(models: Mapping[str, nn.Module], data, cfg: Mapping | None = None, classes=None, mean=None,
        std=None) -> Result:
    cfg = typed_cfg(Config, cfg, "experiments.precision")
    check(cfg, classes, None)
    dataset, classes, mean, std = resolve_data(data, classes, mean, std)
    device = torch.device(cfg["device"])
    idx = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    rows, skipped = [], []
    for name, model in models.items():
        model = copy.deepcopy(model).float().to(device).eval()
        ref, labels = logits_in(model, dataset, idx, "fp32", device, cfg["batch_size"], cfg["progress"])
        ref_top1 = topk_correct(ref, labels, 1).numpy().astype(float)
        hm_idx = idx[: cfg["heatmap_images"]]
        ref_maps = None
        if is_bagnet(model) and hm_idx:
            x = torch.stack([torch.as_tensor(dataset[i][0]) for i in hm_idx]).to(device)
            target = ref[: len(hm_idx)].argmax(1).to(device)
            with precision_mode("fp32", device):
                ref_maps = heatmap(model, x, target=target).float().cpu()
        for mode in cfg["modes"]:
            if not runnable(mode, device):
                skipped.append(f"{name} {mode} (needs CUDA)")
                continue
            got = ref if mode == "fp32" else logits_in(model, dataset, idx, mode, device, cfg["batch_size"],
                                                       cfg["progress"])[0]
            top1 = topk_correct(got, labels, 1).numpy().astype(float)
            top5 = topk_correct(got, labels, 5).numpy().astype(float)
            t1, t5 = bootstrap_ci(top1, seed=cfg["seed"]), bootstrap_ci(top5, seed=cfg["seed"])
            d1 = paired_bootstrap_ci(top1, ref_top1, seed=cfg["seed"])
            dev = (got - ref).abs()
            row = {"model": name, "mode": mode, "n": len(idx), "top1": t1.estimate, "top1_lo": t1.lo,
                   "top1_hi": t1.hi, "top5": t5.estimate, "top5_lo": t5.lo, "top5_hi": t5.hi,
                   "top1_minus_fp32": d1.estimate, "top1_minus_fp32_lo": d1.lo, "top1_minus_fp32_hi": d1.hi,
                   "pred_changed": int((got.argmax(1) != ref.argmax(1)).sum()),
                   "max_logit_dev": float(dev.max()), "max_logit_dev_rel": float(dev.max() / ref.abs().max()),
                   "max_heatmap_dev_rel": np.nan}
            if ref_maps is not None:
                with torch.no_grad(), precision_mode(mode, device):
                    maps = heatmap(model, x, target=target).float().cpu()
                row["max_heatmap_dev_rel"] = float((maps - ref_maps).abs().max() / ref_maps.abs().max())
            rows.append(row)
    table = pd.DataFrame(rows)
    changed = ", ".join(f"{r.model} {r.mode}: {r.pred_changed}" for r in table.itertuples() if r.mode != "fp32")
    return Result(tables={"precision": table}, raw={"skipped": skipped, "device": str(device), "n_images": len(idx)},
                  summary=f"predictions changed vs fp32: {changed or 'none'}"
                          + (f"; skipped: {', '.join(skipped)}" if skipped else ""))



register(Experiment("precision", Config, run, check=check, summary="how fp32 / bf16 / fp16 / TF32 change the answers"))
