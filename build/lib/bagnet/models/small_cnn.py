"""A small CNN whose receptive field covers a whole image: the demo's "standard CNN".

``stages`` stages of two padded 3x3 conv-BN-ReLU layers, max-pooling between stages. Receptive field of
the last stage: 5 + 8 + 16 + 32 = 61 px with 4 stages (a 64 px image), + 64 = 125 px with 5 (112 px), so
it can see global arrangement, which no BagNet can.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .registry import register_model


def _stage(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32, stages: int = 4):
        super().__init__()
        widths = [width, width * 2] + [width * 4] * (stages - 2)
        layers, cin = [], 3
        for i, w in enumerate(widths):
            layers += _stage(cin, w) + ([nn.MaxPool2d(2)] if i < len(widths) - 1 else [])
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@register_model
def small_cnn(num_classes: int = 10, pretrained: bool = False, width: int = 32, stages: int = 4,
              **kwargs) -> SmallCNN:
    if pretrained or kwargs.get("weights"):
        raise ConfigError("small_cnn has no pretrained weights")
    if stages < 2:
        raise ConfigError(f"small_cnn: stages={stages}, need at least 2")
    return SmallCNN(num_classes=num_classes, width=width, stages=stages)
