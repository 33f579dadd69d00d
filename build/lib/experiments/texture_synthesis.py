"""Neural texture synthesis (Gatys, Ecker & Bethge, NIPS 2015) for the paper's texturised images.

Brendel & Bethge (ICLR 2019, Sec. 4) test VGG-16 on texturised ImageNet images: local features are
kept, their global arrangement is destroyed. This module makes such images; it does not evaluate
models (see :mod:`experiments.scrambling`, which uses image quilting as a cheaper stand-in).

Protocol, as checked in Gatys' reference code (github.com/leongatys/DeepTextures: Example.ipynb,
DeepImageSynthesis/{LossFunctions,Misc,ImageSyn}.py, Models/VGG_ave_pool_deploy.prototxt):
  * VGG-19 convolutional part with max pooling replaced by average pooling (``avg_pool``).
  * Layers conv1_1, pool1, pool2, pool3, pool4. Caffe's ReLUs are in place, so the "conv1_1" blob is
    the rectified output: here conv names map to the ReLU after the convolution.
  * Gram matrices normalised by the number of positions M_l: G_l = F_l F_l^T / M_l.
  * Loss sum_l w_l / (4 N_l^2) * ||G_l - G_l(source)||^2 (N_l channels), all w_l equal (1e9).
  * L-BFGS on the pixels, memory m = 20, maxiter 2000, from white noise, with box bounds
    [min, max] of the preprocessed source; source images rescaled to 256^2 pixels.

Deviations:
  * Weights: torchvision's ImageNet VGG-19 instead of Gatys' "normalised" VGG-19 (filters rescaled to
    unit mean activation), which cannot be loaded here. With equal w_l the layers' loss shares differ.
  * Optimiser: ``torch.optim.LBFGS`` with a strong-Wolfe line search instead of scipy's L-BFGS-B. It
    has no box bounds, so the pixels are parametrised as lo + (hi - lo) * sigmoid(z) and L-BFGS runs on
    z: always inside the bounds, the same minima strictly inside them, a different path. Why not a final
    clamp: on test images with saturated regions it undid most of the optimisation (loss 11x below the
    start instead of ~100x); projecting after every step needed up to 2.4x the evaluations. Bounds:
    the valid image range [(0 - mean) / std, (1 - mean) / std] per channel when mean/std are given,
    else Gatys' [min, max] of the source image.
  * Loss scale: divided by the loss of an all-zero-feature image, sum_l ||G_l(source)||^2 / (4 N_l^2),
    so it is ~1 or below whatever the weights' scale. torch's L-BFGS has absolute thresholds (it drops
    curvature pairs with y.s <= 1e-10); Gatys' w_l = 1e9 served the same end for scipy. A constant
    factor does not move the optimum.
  * Start: white noise with each source channel's mean and std, clipped to 0.1% inside the bounds
    (Gatys: N(0, 1) in Caffe's mean-subtracted 0-255 space, i.e. almost the mean colour).
  * One L-BFGS per image: a joint L-BFGS over a batch shares step lengths and curvature pairs, so
    images would change each other's results. The API is batched; the optimisation loops over images.
  * No histogram matching of the result to the source (Gatys' notebook does this for display).
  * Image size: sources larger than ``max_size`` (default 256, Gatys') are refused, not resized.
Not verified here (paper text not available offline): the paper's own synthesis settings and its
VGG-16 numbers (top-5 90.1% -> 79.4%, as quoted in the task).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

GATYS_LAYERS = ("conv1_1", "pool1", "pool2", "pool3", "pool4")


def vgg_layer_names(features: nn.Sequential) -> dict[str, int]:
    """Gatys/Caffe layer names -> index in a torchvision VGG ``features`` stack.

    ``convB_I`` and ``reluB_I`` -> the ReLU after the I-th conv of block B (Caffe's in-place ReLU),
    ``poolB`` -> the pooling layer that ends block B.
    """
    names, block, conv = {}, 1, 0
    for i, m in enumerate(features):
        if isinstance(m, nn.Conv2d):
            conv += 1
        elif isinstance(m, nn.ReLU):
            names[f"conv{block}_{conv}"] = names[f"relu{block}_{conv}"] = i
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            names[f"pool{block}"] = i
            block, conv = block + 1, 0
    return names


def gram(f: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C] Gram matrices, normalised by the number of positions H * W."""
    f = f.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[-1]


class GramExtractor(nn.Module):
    """Gram matrices of chosen VGG layers, per image: ``forward(x) -> {layer: [B, C, C]}``.

    ``features`` (e.g. ``torchvision.models.vgg19(weights=...).features``) is copied up to the
    deepest chosen layer, so the caller's model is left as it is (max pooling, trainable parameters).
    The copy is frozen and always in eval mode; it stays on the device ``features`` was on.
    """

    def __init__(self, features: nn.Sequential, layers: Sequence[str] = GATYS_LAYERS, avg_pool: bool = True):
        super().__init__()
        index = vgg_layer_names(features)
        unknown = [name for name in layers if name not in index]
        if unknown or not layers:
            raise ValueError(f"unknown layer(s) {unknown}; known: {sorted(index, key=index.get)}")
        self.layers = tuple(layers)
        self.index = {name: index[name] for name in self.layers}
        modules = [copy.deepcopy(m) for m in list(features)[: max(self.index.values()) + 1]]
        if avg_pool:  # as Gatys' VGG_ave_pool_deploy.prototxt: AVE pooling, kernel 2, stride 2
            modules = [nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode)
                       if isinstance(m, nn.MaxPool2d) else m for m in modules]
        self.features = nn.Sequential(*modules)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "GramExtractor":
        return super().train(False)  # a fixed feature space: never in training mode

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        at = {i: name for name, i in self.index.items()}
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in at:
                out[at[i]] = gram(x)
        return {name: out[name] for name in self.layers}


def gram_loss(grams: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gatys' texture loss per image, [B]: sum over layers of ||G - G_target||^2 / (4 N_l^2)."""
    return sum(((grams[k] - targets[k]) ** 2).sum((-2, -1)) / (4 * grams[k].shape[-1] ** 2) for k in targets)


def image_bounds(source: torch.Tensor, mean=None, std=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper pixel bounds, [B, C, 1, 1] each (see module doc)."""
    b, c = source.shape[:2]
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=source.dtype, device=source.device).view(1, c, 1, 1)
        s = torch.as_tensor(std, dtype=source.dtype, device=source.device).view(1, c, 1, 1)
        return ((0 - m) / s).expand(b, c, 1, 1), ((1 - m) / s).expand(b, c, 1, 1)
    flat = source.flatten(1)
    return (flat.min(1).values.view(b, 1, 1, 1).expand(b, c, 1, 1),
            flat.max(1).values.view(b, 1, 1, 1).expand(b, c, 1, 1))


def _synthesize_one(source, extractor, steps, seed, lo, hi, lr, history_size):
    """One image [1, C, H, W] -> (texture, [steps + 1] losses)."""
    with torch.no_grad():
        target = extractor(source)
        # constant factor: the loss of an image whose features are all zero is 1 (see module doc)
        scale = 1 / gram_loss({k: torch.zeros_like(g) for k, g in target.items()}, target)
    # seeded on the CPU, so the start is the same on every device
    noise = torch.randn(source.shape, generator=torch.Generator().manual_seed(seed)).to(source)
    start = source.mean((2, 3), keepdim=True) + source.std((2, 3), keepdim=True) * noise
    # pixels = lo + (hi - lo) * sigmoid(z): always inside the bounds, and L-BFGS runs unconstrained on z
    span = (hi - lo).clamp_min(1e-6)  # a constant source has no range
    z = torch.logit(((start - lo) / span).clamp(1e-3, 1 - 1e-3)).requires_grad_(True)

    def image():
        return lo + span * torch.sigmoid(z)

    # max_iter=1 per .step() gives one loss per L-BFGS iteration; the curvature memory carries over.
    # max_eval must be set: its default (max_iter * 5 // 4 = 1) would leave the line search no trials.
    # Tolerances 0: run exactly `steps` iterations (the loss scale does not decide when to stop).
    opt = torch.optim.LBFGS([z], lr=lr, max_iter=1, max_eval=26, history_size=history_size,
                            tolerance_grad=0.0, tolerance_change=0.0, line_search_fn="strong_wolfe")
    cache = []

    def closure():
        # each .step() starts by evaluating the point the last line search accepted: reuse it
        if cache and torch.equal(cache[0], z):
            z.grad = cache[1].clone()
            return cache[2]
        z.grad = None
        loss = scale * gram_loss(extractor(image()), target).sum()
        loss.backward()
        cache[:] = [z.detach().clone(), z.grad.clone(), loss.detach()]
        return cache[2]

    history = []
    for _ in range(steps):
        before = z.detach().clone()
        history.append(float(opt.step(closure)))
        if torch.equal(before, z):  # the line search found no lower point in float precision: converged
            break
    history += [float(closure())] * (steps + 1 - len(history))
    with torch.no_grad():
        return image(), history


def synthesize(source_images: torch.Tensor, extractor: GramExtractor, steps: int = 2000, seed: int = 0, *,
               lr: float = 1.0, history_size: int = 20, max_size: int = 256, mean=None,
               std=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texturise a batch [B, 3, H, W] (the extractor's normalised input space, its device).

    Image i starts from noise seeded with ``seed + i``, so a batch equals its images synthesised one by
    one with seeds seed, seed + 1, ... Returns the textures (inside the bounds of the module doc) and
    the loss history [B, steps + 1] (entry k: the normalised loss after k L-BFGS iterations; the last
    value is repeated if L-BFGS stops making progress). ``steps=0`` returns the starting noise.
    """
    if source_images.dim() != 4:
        raise ValueError(f"expected [B, C, H, W], got shape {tuple(source_images.shape)}")
    if max(source_images.shape[-2:]) > max_size:
        raise ValueError(f"image side {max(source_images.shape[-2:])} > max_size {max_size}: resize first")
    lo, hi = image_bounds(source_images, mean, std)
    textures, history = [], []
    for i in range(len(source_images)):
        one = slice(i, i + 1)
        tex, hist = _synthesize_one(source_images[one], extractor, steps, seed + i, lo[one], hi[one], lr,
                                    history_size)
        textures.append(tex)
        history.append(hist)
    return torch.cat(textures), torch.tensor(history, dtype=torch.float64)


@dataclass(frozen=True)
class TextureConfig:
    """Texture-synthesis protocol. Defaults follow Gatys et al. (2015) and their reference code:

    layers conv1_1, pool1, pool2, pool3, pool4; avg_pool True (max pooling replaced by average
    pooling); steps 2000 L-BFGS iterations (their maxiter); history_size 20 (their L-BFGS memory m);
    lr 1.0 (torch's L-BFGS initial step, then a strong-Wolfe line search; scipy has no lr); seed 0;
    max_size 256 (their image size; the paper's 224 px crops fit). Deviations: see the module doc.
    """

    layers: tuple[str, ...] = GATYS_LAYERS
    steps: int = 2000
    lr: float = 1.0
    history_size: int = 20
    avg_pool: bool = True
    seed: int = 0
    max_size: int = 256

    def extractor(self, features: nn.Sequential) -> GramExtractor:
        return GramExtractor(features, self.layers, self.avg_pool)

    def synthesize(self, source_images: torch.Tensor, extractor: GramExtractor, mean=None, std=None):
        return synthesize(source_images, extractor, self.steps, self.seed, lr=self.lr,
                          history_size=self.history_size, max_size=self.max_size, mean=mean, std=std)
