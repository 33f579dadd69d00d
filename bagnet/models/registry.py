"""One registry for every model: ``create_model(name, num_classes=..., pretrained=False, **kw)``."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 1000, pretrained: bool = False, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
