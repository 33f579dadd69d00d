"""CBAM-ResNet-50 (Woo et al., ECCV 2018, "CBAM: Convolutional Block Attention Module").

Every ResNet-50 bottleneck re-weights the output of its bn3, before the residual addition, first per
channel (avg- and max-pooled descriptors -> shared MLP with reduction 16 -> sigmoid) and then per
position (channel-wise mean and max -> 7x7 conv -> sigmoid). Built on torchvision's ResNet, so all
non-CBAM state-dict keys equal torchvision ``resnet50``'s and its ImageNet weights load into the backbone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import Bottleneck, ResNet

from ..errors import WeightsError
from .registry import register_model
from .torchvision_models import DEFAULT_CFGS as TV_CFGS
from .weights import fetch_state_dict

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM", "CBAMBottleneck", "cbam_resnet50"]


class ChannelAttention(nn.Module):
    """sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) per channel."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        # 1x1 convs act as the shared MLP on both pooled columns at once, so each module runs once.
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], dim=3)  # [B,C,1,2]
        logits = self.fc2(self.act(self.fc1(pooled))).sum(3, keepdim=True)
        return x * self.gate(logits)


class SpatialAttention(nn.Module):
    """sigmoid(BN(conv7x7([mean_c(x); max_c(x)]))) per position (BN as in the authors' code)."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * self.gate(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class CBAMBottleneck(Bottleneck):
    """torchvision Bottleneck + CBAM on bn3's output. One ReLU module per activation (attribution
    methods such as DeepLift need distinct modules); ReLUs hold no state, so the keys are unchanged."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1, self.relu2, self.relu3 = nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        self.cbam = CBAM(self.conv3.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.cbam(self.bn3(self.conv3(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _is_cbam_key(key: str) -> bool:
    return ".cbam." in key


@register_model(default_cfg=TV_CFGS["resnet50"])
def cbam_resnet50(num_classes: int = 1000, pretrained: bool = False, weights: str | None = None,
                  **kwargs) -> ResNet:
    """CBAM-ResNet-50.

    ``pretrained=True`` loads torchvision's ResNet-50 ImageNet weights (IMAGENET1K_V1, hash-checked
    download or hub cache; ``weights=`` a local copy of that file or a full CBAM-ResNet-50 state dict)
    into the backbone. No released CBAM weights are used: the CBAM modules stay freshly initialised,
    so the network must be fine-tuned before its accuracy means anything. With ``num_classes != 1000``
    the head ``fc`` is freshly initialised too.
    """
    model = ResNet(CBAMBottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)
    if pretrained or weights:
        cfg = TV_CFGS["resnet50"]
        sd = fetch_state_dict(cfg["url"], cfg["file"], weights)
        if num_classes != cfg["num_classes"]:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise WeightsError(f"weights do not fit cbam_resnet50: {str(e).splitlines()[-1].strip()}") from None
        missing = [k for k in missing if not _is_cbam_key(k)
                   and not (num_classes != cfg["num_classes"] and k.startswith("fc."))]
        if missing or unexpected:
            raise WeightsError(f"weights do not fit cbam_resnet50: missing {missing[:4]}, "
                               f"unexpected {list(unexpected)[:4]}")
    return model
