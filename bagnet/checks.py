"""Refusals before anything is written: a model that cannot be built or run at the data's size, an empty split,
a folder that cannot be written. Each is one error naming the key to change."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .checkpoint import model_kwargs
from .config import as_dict
from .data import DataBundle, DataError
from .errors import ConfigError, UserError
from .models import create_model


def validate_model(cfg: DictConfig, data: DataBundle, model: nn.Module | None = None) -> nn.Module:
    """Build ``cfg.model`` (unless ``model`` is given) and run one image of ``data.image_size`` through it
    on the CPU without gradients: a model that cannot be built, or cannot run at that size, is a
    ConfigError naming the key to change, before anything is written."""
    tag = cfg.model.get("tag", cfg.model.name)
    args = ", ".join(f"model.{k}={v}" for k, v in model_kwargs(cfg.model).items()
                     if not (k in ("pretrained", "weights") and not v)) or "its defaults"
    if model is None:
        try:
            with warnings.catch_warnings():     # e.g. "zero-element tensors": the forward below says it better
                warnings.simplefilter("ignore")
                model = create_model(**as_dict(cfg.model), num_classes=data.num_classes)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  whatever the builder raises for impossible arguments
            raise ConfigError(f"model={tag} cannot be built with {args}: {_one_line(e)}") from None
    size = int(data.image_size)
    err = _forward_error(model, size)
    if err is not None:
        if size < 224 and _forward_error(model, 224) is None:    # it runs on larger images: the size is wrong
            raise ConfigError(f"data.image_size={size} is too small for model={tag} ({err}); use a larger "
                              "data.image_size")
        raise ConfigError(f"model={tag} cannot run with {args} ({size} px images: {err}); check the model.* values")
    return model


def _forward_error(model: nn.Module, size: int) -> str | None:
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    was_training = model.training
    model.eval()    # BN in train mode cannot take one image of 1x1 features; eval mode changes no state
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001  shape errors come as RuntimeError, ValueError, ...
        return _one_line(e)
    finally:
        model.train(was_training)
    return None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


def check_splits(data: DataBundle, splits) -> None:
    """The splits a task reads must hold images (an empty one would fail only after files were written)."""
    sizes = {s: len(data.split(s)) for s in dict.fromkeys(splits)}
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise DataError(f"data={data.info.get('name', '?')}: the {'/'.join(empty)} split is empty (sizes {sizes}); "
                        "check data.root and the data's split settings")


def bad_image_counts(data: DataBundle) -> dict[str, int]:
    """Undecodable images met (and skipped) per split so far (0 for in-memory data)."""
    return {s: int(getattr(data.split(s), "bad_images", 0)) for s in ("train", "val", "test")}


def check_writable(path: Path, key: str) -> None:
    """Refuse, before anything is created, a folder that cannot be written: ``path`` when it exists, else the
    nearest folder above it that exists (where it would be created). ``key``: the config key that chose it."""
    path = Path(path).absolute()
    there = path
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: {there} is a file, not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        hint = ("paths.runs_dir=... (or BAGNET_RUNS_DIR)" if key == "run_dir" else
                "out_dir=... or paths.results_dir=..." if key == "out_dir" else f"{key}=...")
        raise ConfigError(f"{key}: cannot write {path}: {there} is read-only; set {hint} to a writable folder")


