"""One registry for every model: ``create_model(name, num_classes=..., pretrained=False, **kw)``.

The one public way to build a model from a name; a model config (configs/model/*.yaml) is its keyword
arguments: ``create_model(**cfg.model, num_classes=n)`` (``tag`` is only a display label).
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULT_CFGS: dict[str, Callable[..., dict]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, default_cfg: dict | Callable[..., dict] | None = None):
    """Register ``fn`` under its name; ``default_cfg`` describes its pretrained release (url, file,
    input_size, mean, std, num_classes), a dict or a function of the model's keyword arguments."""
    def add(f):
        _MODELS[f.__name__] = f
        if default_cfg is not None:
            _DEFAULT_CFGS[f.__name__] = default_cfg if callable(default_cfg) else (lambda **_: default_cfg)
        return f
    return add(fn) if fn is not None else add


def default_cfg(name: str, **model_kwargs) -> dict | None:
    """The pretrained release of model ``name`` built with ``model_kwargs`` (None if it has none)."""
    make = _DEFAULT_CFGS.get(name)
    return make(**model_kwargs) if make else None


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 1000, pretrained: bool = False, tag: str | None = None,
                 **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
