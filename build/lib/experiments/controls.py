"""Hand-built models whose answer to every signature is known: the controls the instruments are proven on.

* :func:`colour_bagnet` — a real BagNet-q (the library's architecture, so heatmaps and every code path
  apply) whose weights are set by hand: class c's patch logit is a positive-weighted sum of colour
  channel c over the q x q patch (plus a constant). Local by construction: its image logit is linear in
  the pixels, so occluding regions removes exactly the sum of their single-region effects, parts farther
  apart than q - 1 px never interact, and permuting tiles no smaller than q keeps its decision.
* :class:`ArrangementModel` — responds only to the relative arrangement of two parts: class 0 when the
  red part lies left of the green part, class 1 when right of it (soft centres of mass, so it is smooth
  and attributions are defined). Global by construction: scrambling tiles that separate the parts
  destroys it, and occluding both parts interacts (the joint effect is not the sum of the single ones).
* :func:`two_part_images` — images of the arrangement task: a red and a green square on the normalised
  mean colour (0), at positions drawn independently of the class; the data knows where its parts are.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from bagnet.models import create_model

SIGNAL_OFFSET = 10.0   # added to the signal after the stem: keeps every ReLU in its linear range (inputs in [-2, 2])


def blank_bagnet(patch_size: int, num_classes: int, width: int = 4) -> nn.Module:
    """A BagNet-q in eval mode whose weights a control sets by hand: every convolution and linear layer 0,
    every BatchNorm the identity (eps 0, so it is exactly the identity)."""
    net = create_model("bagnet", patch_size=patch_size, width=width, num_classes=num_classes).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.eps = 0.0
                m.running_mean.zero_(); m.running_var.fill_(1.0); m.weight.fill_(1.0); m.bias.zero_()
    return net


def colour_bagnet(patch_size: int = 33, num_classes: int = 2, width: int = 4, branch_gain: float = 1.0) -> nn.Module:
    """A BagNet-q whose patch logit of class c is ``sum_(u,v) w(u,v) * x[c](u,v) + const`` over the q x q patch,
    w > 0 everywhere in the patch (each 3x3 convolution averages, each 1x1 passes, the residual adds):
    channel c carries colour c through the network (c < 3, so at most 3 classes). ``branch_gain`` weights
    each residual branch against its identity shortcut: larger = evidence spread more evenly over the patch
    (a harder case for heatmap geometry; 1 = strongly centre-weighted)."""
    if num_classes > 3:
        raise ValueError("colour_bagnet: one class per colour channel (at most 3)")
    net = blank_bagnet(patch_size, num_classes, width)
    channels = range(num_classes)
    with torch.no_grad():
        for c in channels:
            net.conv1.weight[c, c] = 1.0
            net.conv2.weight[c, c] = 1.0 / 9.0
            net.bn1.bias[c] = SIGNAL_OFFSET
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for i, block in enumerate(layer):
                k = block.conv2.kernel_size[0]
                for c in channels:
                    block.conv1.weight[c, c] = 1.0
                    block.conv2.weight[c, c] = 1.0 / (k * k)
                    block.conv3.weight[c, c] = branch_gain
                    if block.downsample is not None:      # the shortcut of a stage's first block: zero
                        block.downsample[0].weight[c, c] = 0.0
        for c in channels:
            net.fc.weight[c, c] = 1.0
    return net


class ArrangementModel(nn.Module):
    """Class 0 (red left of green) or 1 (red right of green), from the soft centres of mass of the two
    colours along x: logit_0 = scale * tanh((x_green - x_red) / width) * present(red) * present(green),
    logit_1 = -logit_0. It sees no local feature that tells the classes apart (both classes hold the same
    two parts), and its evidence needs both parts: occluding either removes all of it, so the two
    occlusions interact (joint effect = half their sum)."""

    def __init__(self, scale: float = 2.0, width: float = 4.0, threshold: float = 0.5):
        super().__init__()
        self.scale, self.width, self.threshold = scale, width, threshold
        self.anchor = nn.Parameter(torch.zeros(1))      # a parameter, so device/dtype follow .to()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device) + self.anchor
        def centre_and_presence(channel: torch.Tensor):
            mass = torch.relu(channel - self.threshold)                       # [B, H, W]
            total = mass.sum((1, 2))
            return (mass.sum(1) * xs).sum(1) / (total + 1e-3), total / (total + 1.0)
        (xr, pr), (xg, pg) = centre_and_presence(x[:, 0]), centre_and_presence(x[:, 1])
        logit = self.scale * torch.tanh((xg - xr) / self.width) * pr * pg
        return torch.stack([logit, -logit], 1)


class PartsDataset(TensorDataset):
    """A TensorDataset that knows where each image's parts are: ``parts(i)`` -> [(y0, x0, y1, x1), ...]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, boxes: list):
        super().__init__(images, labels)
        self.boxes = boxes

    def parts(self, index: int) -> list:
        return self.boxes[index]


def two_part_images(n: int, size: int = 64, part: int = 8, seed: int = 0, min_gap: int = 8) -> PartsDataset:
    """``n`` images [3, size, size] on 0 (the normalised mean colour): a red and a green part x part square
    (value 2 in their channel) at independent uniform positions, at least ``min_gap`` px apart along x;
    label 0 when red is left of green. Each class holds the same two parts: only their arrangement differs."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, size, size)
    labels = torch.zeros(n, dtype=torch.long)
    boxes = []
    for i in range(n):
        while True:
            xr, xg = (int(v) for v in torch.randint(0, size - part + 1, (2,), generator=g))
            if abs(xr - xg) >= part + min_gap:
                break
        yr, yg = (int(v) for v in torch.randint(0, size - part + 1, (2,), generator=g))
        images[i, 0, yr:yr + part, xr:xr + part] = 2.0
        images[i, 1, yg:yg + part, xg:xg + part] = 2.0
        labels[i] = int(xr > xg)
        boxes.append([(yr, xr, yr + part, xr + part), (yg, xg, yg + part, xg + part)])
    return PartsDataset(images, labels, boxes)


def blob_images(n: int, size: int = 112, blobs: int = 3, blob: int = 6, seed: int = 0,
                num_classes: int = 2) -> TensorDataset:
    """``n`` images with ``blobs`` squares of side ``blob`` of the class's colour (value in [1, 2]) at
    uniform positions on 0: sparse local evidence, for the sensitivity control."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 3, size, size)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    for i in range(n):
        for _ in range(blobs):
            y, x = (int(v) for v in torch.randint(0, size - blob + 1, (2,), generator=g))
            images[i, int(labels[i]), y:y + blob, x:x + blob] = 1.0 + float(torch.rand(1, generator=g))
    return TensorDataset(images, labels)
