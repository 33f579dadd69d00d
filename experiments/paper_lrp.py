"""epsilon-LRP for the paper's feature-sensitivity comparison (Brendel & Bethge 2019, Sec. 4, Fig. 8),
kept apart from :mod:`experiments.sensitivity` (whose method list it extends, with the same protocol).

captum's ``LRP`` (epsilon rule on every Conv2d / Linear / pooling / BatchNorm2d layer, ReLU and Dropout
passed through) propagates relevance only through *modules*. A model whose forward uses functional
operations between its layers — residual additions (ResNet, BagNet), concatenations and ``F.relu``
(DenseNet) — gets no relevance rule for them, so its attributions are not LRP. :func:`lrp_support`
finds those models (traced with torch.fx) and says why; for them the method is reported as not
supported instead of silently returning something else. Of the paper's models AlexNet and VGG-16
are supported; ResNet-50/152, DenseNet-169 and the BagNets are not.
"""
from __future__ import annotations

import copy
import operator
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from bagnet.utils import unwrap

from .common import eval_indices, forward, iter_batches
from .sensitivity import masked_images, rank_regions

# functional ops that carry signal between layers without an LRP rule
_UNSUPPORTED_FUNCTIONS = {operator.add, operator.iadd, operator.mul, torch.add, torch.cat, torch.mul, F.relu,
                          torch.relu, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d}
_UNSUPPORTED_METHODS = {"add", "add_", "relu", "relu_", "mul", "mul_"}


def lrp_support(model: nn.Module) -> str | None:
    """None if captum's LRP covers every operation of ``model``; else the reason it does not."""
    from captum.attr._core.lrp import (
        SUPPORTED_LAYERS_WITH_RULES,
        SUPPORTED_NON_LINEAR_LAYERS,
    )

    net = unwrap(model)
    known = tuple(SUPPORTED_LAYERS_WITH_RULES) + tuple(SUPPORTED_NON_LINEAR_LAYERS)
    leaves = [m for m in net.modules() if not list(m.children())]
    bad = sorted({type(m).__name__ for m in leaves if not isinstance(m, known)})
    if bad:
        return f"layers without a captum LRP rule: {', '.join(bad)}"
    try:
        graph = fx.symbolic_trace(net).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure means: cannot check, do not claim support
        return f"not traceable with torch.fx ({type(e).__name__})"
    ops = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _UNSUPPORTED_FUNCTIONS:
            ops.add(getattr(node.target, "__name__", str(node.target)))
        elif node.op == "call_method" and node.target in _UNSUPPORTED_METHODS:
            ops.add(node.target)
    if ops:
        return (f"functional ops between layers ({', '.join(sorted(ops))}: skip connections / concatenation), "
                "which captum's LRP propagates no relevance through")
    return None


def lrp_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """epsilon-LRP relevance of the true-class logit, summed over channels: [B, H, W] (CPU)."""
    from captum.attr import LRP

    net = copy.deepcopy(unwrap(model)).eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False   # captum's hooks need the pre-activation tensors intact
    for p in net.parameters():
        p.requires_grad_(False)
    p = next(net.parameters())
    warnings.filterwarnings("ignore", message=".*(hooks|did not already require gradients).*", category=UserWarning)
    a = LRP(net).attribute(images.to(p.device, p.dtype), target=labels.to(p.device))
    return a.detach().sum(1).float().cpu()


def lrp_logit_drops(model: nn.Module, dataset, cfg: dict) -> np.ndarray:
    """Logit drop [n_images, N] when occluding the top-1..N regions ranked by epsilon-LRP, on exactly the
    images and with exactly the regions and occluder of :func:`experiments.sensitivity.run` (same
    ``num_images``, ``seed``, ``region``, ``max_regions``, ``batch_size``)."""
    k, n_max = cfg["region"], cfg["max_regions"]
    indices = eval_indices(len(dataset), cfg["num_images"], cfg["seed"])
    out = []
    for idx, images, labels in iter_batches(dataset, indices, cfg["batch_size"], cfg.get("progress", True),
                                            "sensitivity lrp"):
        f0 = forward(model, images, cfg["batch_size"]).gather(1, labels[:, None]).double()
        x = masked_images(images, rank_regions(lrp_maps(model, images, labels), k), k, n_max)
        logits = forward(model, x.flatten(0, 1), cfg["batch_size"]).view(len(idx), x.shape[1], -1)
        f = logits.gather(2, labels[:, None, None].expand(-1, x.shape[1], 1))[..., 0].double()
        out.append((f0 - f).numpy())
    return np.concatenate(out) if out else np.zeros((0, n_max))
