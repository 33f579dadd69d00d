"""epsilon-LRP, one of the sensitivity experiment's methods (``lrp`` in ``experiments.sensitivity.methods``;
Brendel & Bethge 2019, Sec. 4, Fig. 8): the same regions, masking and occluder as every other method.

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

import torch
import torch.nn.functional as F
from torch import fx, nn

from bagnet.utils import unwrap


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
