"""BagNet-q (Brendel & Bethge, ICLR 2019), weight-compatible with the authors' PyTorch release.

A ResNet-50 whose 3x3 convolutions are mostly replaced by 1x1 and whose convolutions are all
unpadded ("valid"), so each unit of the last stage sees exactly one q x q patch of the image.
The image logit is the spatial mean of per-patch logits: `model(x) == patch_logits(x).mean((2, 3))`.

State-dict keys and tensor semantics equal `bagnets.pytorchnet` of
https://github.com/wielandbrendel/bag-of-local-features-models, so the released ImageNet weights load.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .registry import register_model
from .weights import load_pretrained

__all__ = ["Bottleneck", "BagNet", "bagnet", "release_forward", "bagnet9", "bagnet17", "bagnet33", "KERNEL3", "DEFAULT_CFGS"]

# Per-stage number of leading blocks whose conv2 is 3x3 (the rest are 1x1). This alone sets q.
KERNEL3 = {9: (1, 1, 0, 0), 17: (1, 1, 1, 0), 33: (1, 1, 1, 1)}

_URL_ROOT = ("https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
             "249e8fa82c0913623a807d9d35eeab9da7dcc2a8/")
# The authors named the files by patch size minus one (bagnet8 = BagNet-9).
# The hex part of each name is the sha256 prefix torch.hub checks.
DEFAULT_CFGS = {
    q: dict(url=_URL_ROOT + fname, file=fname, input_size=(3, 224, 224), num_classes=1000,
            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    for q, fname in {9: "bagnet8-34f4ccd2.pth.tar", 17: "bagnet16-105524de.pth.tar",
                     33: "bagnet32-2ddd53ed.pth.tar"}.items()
}


def crop_bottom_right(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x[..., :h, :w]`` for ``like``'s (h, w), as a negative pad: the same values, but its backward keeps
    channels_last. Autograd's slice backward builds an NCHW zero tensor, and BatchNorm's backward on a
    channels_last input with an NCHW gradient takes a slow path (at 224 px on CPU the four downsample BNs
    took 0.84 s of the 1.1 s BN backward of a BagNet-33 step). No data-dependent branch: torch.fx traces it."""
    return F.pad(x, (0, like.shape[-1] - x.shape[-1], 0, like.shape[-2] - x.shape[-2]))


class Bottleneck(nn.Module):
    """ResNet bottleneck without padding; stride on conv2; residual cropped bottom/right."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, kernel_size: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, stride=stride, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        if self.conv2.kernel_size[0] > 1:
            # A valid 3x3 conv shrinks the map; the release drops the residual's last rows/cols.
            residual = crop_bottom_right(residual, out)
        return self.relu(out + residual)


class BagNet(nn.Module):
    """ResNet-50-shaped bag-of-local-features network.

    Args:
        patch_size: q, one of ``KERNEL3`` (or pass ``kernel3`` for another layout).
        num_classes: size of the linear head applied to every patch feature.
        width: base width (64 in the paper); stages use width * (1, 2, 4, 8).
        kernel3: per-stage count of leading 3x3 blocks; overrides ``patch_size``.
    """

    def __init__(self, patch_size: int = 33, num_classes: int = 1000, width: int = 64,
                 layers: Sequence[int] = (3, 4, 6, 3), strides: Sequence[int] = (2, 2, 2, 1),
                 kernel3: Sequence[int] | None = None):
        super().__init__()
        if kernel3 is None:
            if patch_size not in KERNEL3:
                raise ConfigError(f"unsupported BagNet patch_size={patch_size}; supported: "
                                 f"{sorted(KERNEL3)} (or give kernel3=[k1,k2,k3,k4] explicitly)")
            kernel3 = KERNEL3[patch_size]
        self.kernel3 = tuple(int(k) for k in kernel3)
        self.strides = tuple(int(s) for s in strides)
        self.patch_size = receptive_field_size(self.kernel3, self.strides)
        self.num_classes = num_classes
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 1, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=0.001)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(width, layers[0], self.strides[0], self.kernel3[0])
        self.layer2 = self._make_layer(width * 2, layers[1], self.strides[1], self.kernel3[1])
        self.layer3 = self._make_layer(width * 4, layers[2], self.strides[2], self.kernel3[2])
        self.layer4 = self._make_layer(width * 8, layers[3], self.strides[3], self.kernel3[3])
        self.num_features = width * 8 * Bottleneck.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int, kernel3: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, 3 if kernel3 > 0 else 1)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, kernel_size=3 if i < kernel3 else 1)
                   for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features [B, C, H', W']; unit (i, j) sees input rows 8i..8i+q-1, cols 8j..8j+q-1."""
        x = self.relu(self.bn1(self.stem_conv(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def stem_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv2(conv1(x)) as one 3x3 conv: with no nonlinearity between a 1x1 conv (3 -> width) and the
        3x3 conv (width -> width) they compose into a 3x3 conv from 3 channels. Same function, same
        gradients for both weights (autograd goes through the product); at 224 px it saves the
        3.6 GFLOP per image (about a fifth of BagNet-33's forward) that the 3x3 conv spends on
        width input channels at full resolution."""
        # conv1 is built 1x1, stride 1, without bias (__init__); no shape test here, so torch.fx traces it.
        # einsum returns the kernel in channels_last strides; contiguous, so that the input alone picks the
        # layout (an NHWC kernel for a net narrower than 16 channels crashes torch 2.14.1 on CPU).
        w = torch.einsum("omyx,mc->ocyx", self.conv2.weight, self.conv1.weight[:, :, 0, 0]).contiguous()
        return F.conv2d(x, w)

    def patch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of every patch: [B, num_classes, H', W']."""
        f = self.forward_features(x)
        return torch.einsum("bchw,kc->bkhw", f, self.fc.weight) + self.fc.bias[None, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean-then-linear == linear-then-mean, and is cheaper.
        return self.fc(self.forward_features(x).mean((2, 3)))


def release_forward(model: BagNet, x: torch.Tensor) -> torch.Tensor:
    """The authors' ``bagnets.pytorchnet`` forward, op for op, on this model's weights: conv1 and conv2 as
    two convs, the residual cropped by plain slicing, ``out += residual``. The reference that the fast
    forward is tested against and that the heatmap benchmark's baseline runs."""
    x = model.relu(model.bn1(model.conv2(model.conv1(x))))
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for b in layer:
            out = b.relu(b.bn1(b.conv1(x)))
            out = b.relu(b.bn2(b.conv2(out)))
            out = b.bn3(b.conv3(out))
            residual = x if b.downsample is None else b.downsample(x)
            diff = residual.size(-1) - out.size(-1)
            if diff:
                residual = residual[:, :, :-diff, :-diff]
            out += residual
            x = b.relu(out)
    return model.fc(x.mean((2, 3)))


def receptive_field_size(kernel3: Sequence[int], strides: Sequence[int]) -> int:
    """Analytic receptive field of the last stage: 3 (stem) + sum over 3x3 convs of 2*jump."""
    rf, jump = 3, 1
    for k, s in zip(kernel3, strides):
        # first block carries the stride on conv2; its kernel is 3 if k > 0.
        rf += 2 * jump * min(k, 1)
        jump *= s
        rf += 2 * jump * max(k - 1, 0)
    return rf


def bagnet(patch_size: int = 33, num_classes: int = 1000, pretrained: bool = False,
           weights: str | None = None, width: int = 64, kernel3: Sequence[int] | None = None,
           **kwargs) -> BagNet:
    """Build BagNet-q. ``pretrained=True`` loads the authors' ImageNet weights
    (or ``weights=/path/file.pth.tar`` a local copy)."""
    model = BagNet(patch_size=patch_size, num_classes=num_classes, width=width, kernel3=kernel3, **kwargs)
    if pretrained or weights:
        if kernel3 is not None or width != 64:
            raise ConfigError("pretrained BagNet weights exist only for the default layout (width=64, "
                             "patch_size 9/17/33)")
        load_pretrained(model, DEFAULT_CFGS[patch_size], weights=weights, num_classes=num_classes,
                        classifier="fc")
    return model


def _release(patch_size: int = 33, **_) -> dict:
    return DEFAULT_CFGS[patch_size]


@register_model(default_cfg=DEFAULT_CFGS[9])
def bagnet9(**kwargs) -> BagNet:
    return bagnet(patch_size=9, **kwargs)


@register_model(default_cfg=DEFAULT_CFGS[17])
def bagnet17(**kwargs) -> BagNet:
    return bagnet(patch_size=17, **kwargs)


@register_model(default_cfg=DEFAULT_CFGS[33])
def bagnet33(**kwargs) -> BagNet:
    return bagnet(patch_size=33, **kwargs)


register_model(bagnet, default_cfg=_release)
