"""Checkpoints: what a training run saves, and the one way to load a trained run.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a crafted
file cannot run code. Everything a checkpoint holds is stored in that form (RNG states included).
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn as nn

from .errors import ConfigError
from .models import create_model
from .utils import refused_content

SPEC_KEYS = ("name", "kwargs", "num_classes", "classes", "mean", "std", "image_size")


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file as given, or a finished run directory's best (else last) checkpoint. A run dir
    without ``summary.json`` is still training or was interrupted: its best.pt so far is not the run's
    result, so it is refused (pass the checkpoint file itself to use it anyway)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.yaml").is_file() and not (path / "summary.json").is_file():
            raise ConfigError(f"run dir {path} has not finished training (no summary.json): run its train "
                              f"command again to finish it, or pass {path / 'checkpoints' / 'best.pt'} to use "
                              "its checkpoint as it is")
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise ConfigError(f"no checkpoint in run dir {path} (expected checkpoints/best.pt or last.pt)")
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint dict (file or run dir), loaded without executing code."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"refused to load {path}: {refused_content(e)}; a checkpoint of this suite "
                          "holds only those, so this file was not made by it or was altered") from None
    except Exception as e:  # truncated, or not a torch file
        hint = (f"; use checkpoint={path.with_name('best.pt')}, or train again from scratch with "
                "trainer.resume=false" if path.name == "last.pt" else "")
        raise ConfigError(f"cannot read checkpoint {path} ({type(e).__name__}: damaged or truncated){hint}") from None
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt or "model" not in ckpt:
        raise ConfigError(f"{path} is not a checkpoint of this suite (no model_spec / model)")
    return ckpt


def model_kwargs(model_cfg: Mapping) -> dict:
    """A model config's constructor arguments (``name`` and the display ``tag`` removed)."""
    return {k: v for k, v in dict(model_cfg).items() if k not in ("name", "tag")}


def load_run(ckpt: dict | str | Path, model_cfg: Mapping | None = None) -> tuple[nn.Module, dict]:
    """The model a run (dir, checkpoint file or loaded dict) trained, with its weights, and its spec.

    With ``model_cfg`` the checkpoint must be of that model (same name and architecture arguments).
    """
    where = "the checkpoint"
    if not isinstance(ckpt, dict):
        where = str(checkpoint_path(ckpt))
        ckpt = load_checkpoint(ckpt)
    spec = ckpt["model_spec"]
    if not (isinstance(spec, Mapping) and isinstance(spec.get("name"), str) and isinstance(spec.get("kwargs"), Mapping)
            and isinstance(spec.get("num_classes"), int)) or not isinstance(ckpt["model"], Mapping):
        raise ConfigError(f"{where} is not a checkpoint of this suite: its model_spec needs name, kwargs and "
                          "num_classes, and its model a state dict")
    arch = {k: v for k, v in spec["kwargs"].items() if k not in ("pretrained", "weights")}
    if model_cfg is not None:
        want = {k: v for k, v in model_kwargs(model_cfg).items() if k not in ("pretrained", "weights")}
        want["name"] = model_cfg["name"]
        have = {"name": spec["name"], **arch}
        diff = sorted(k for k in set(want) | set(have) if have.get(k) != want.get(k))
        if diff:
            raise ConfigError(f"checkpoint is for {_fmt(have)} but the config asks for {_fmt(want)} "
                              f"(differs in {diff}); pass model=... to match")
    try:
        model = create_model(spec["name"], num_classes=spec["num_classes"], **arch)
    except Exception as e:  # noqa: BLE001  an unknown name or arguments the builder refuses
        raise ConfigError(f"{where}: its model_spec ({_fmt({'name': spec['name'], **arch})}) cannot be built: "
                          f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    mismatch = state_dict_mismatch(model, ckpt["model"])
    if mismatch:
        raise ConfigError(f"{where}: its weights do not fit {_fmt({'name': spec['name'], **arch})} ({mismatch})")
    model.load_state_dict(ckpt["model"])
    return model, spec


def state_dict_mismatch(model: nn.Module, state: Mapping) -> str | None:
    """What keeps ``state`` from loading into ``model`` (missing / unexpected keys, shapes), in one line; None
    when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    parts = [f"{len(items)} {what} (first: {items[0]})" for what, items in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    return "; ".join(parts) or None


def _fmt(d: dict) -> str:
    return d["name"] + "(" + ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if k != "name") + ")"


# RNG states as tensors and plain containers, so checkpoints load with weights_only=True.
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
