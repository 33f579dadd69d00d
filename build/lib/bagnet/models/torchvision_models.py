"""torchvision baselines with the head sized to ``num_classes`` and optional ImageNet weights
(hash-checked download or local file, same offline rule as BagNets)."""
from __future__ import annotations

import re

import torch.nn as nn
import torchvision.models as tvm

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .registry import register_model
from .weights import load_pretrained

# name -> (torchvision builder, default weights enum, classifier attribute path)
_TV = {
    "resnet18": (tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, "fc"),
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, "fc"),
    "densenet121": (tvm.densenet121, tvm.DenseNet121_Weights.IMAGENET1K_V1, "classifier"),
    "densenet169": (tvm.densenet169, tvm.DenseNet169_Weights.IMAGENET1K_V1, "classifier"),
    "vgg11": (tvm.vgg11, tvm.VGG11_Weights.IMAGENET1K_V1, "classifier.6"),
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1, "classifier.6"),
    "vgg16_bn": (tvm.vgg16_bn, tvm.VGG16_BN_Weights.IMAGENET1K_V1, "classifier.6"),
    "vgg19": (tvm.vgg19, tvm.VGG19_Weights.IMAGENET1K_V1, "classifier.6"),   # texture synthesis (Gatys et al.)
    "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1, "classifier.6"),
    "resnet152": (tvm.resnet152, tvm.ResNet152_Weights.IMAGENET1K_V1, "fc"),
}
DEFAULT_CFGS = {name: dict(url=w.url, file=w.url.rsplit("/", 1)[-1], input_size=(3, 224, 224),
                           num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD)
                for name, (_, w, _) in _TV.items()}

# Old DenseNet checkpoints name 'norm.1' what the module calls 'norm1' (as in torchvision._load_state_dict).
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def densenet_filter(sd: dict) -> dict:
    return {(_DENSENET_KEY.sub(lambda m: m.group(1) + m.group(2), k)): v for k, v in sd.items()}


def _build(name: str, num_classes: int = 1000, pretrained: bool = False, weights: str | None = None,
           **kwargs) -> nn.Module:
    builder, _, head = _TV[name]
    model = builder(weights=None, num_classes=1000, **kwargs)
    if pretrained or weights:
        load_pretrained(model, DEFAULT_CFGS[name], weights=weights, classifier=head,
                        state_filter=densenet_filter if name.startswith("densenet") else None)
    if num_classes != 1000:
        parent_name, _, attr = head.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def _make(name: str):
    def fn(**kwargs) -> nn.Module:
        return _build(name, **kwargs)
    fn.__name__ = name
    fn.__doc__ = f"torchvision {name}; ``pretrained=True`` loads torchvision's ImageNet weights."
    return register_model(fn, default_cfg=DEFAULT_CFGS[name])


for _name in _TV:
    globals()[_name] = _make(_name)
