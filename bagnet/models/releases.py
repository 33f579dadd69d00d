"""Where each model's pretrained release file is (``locate_weights``) and whether it can be had now
(``check_weights``), for any registered model: the authors' BagNets, torchvision's and pytorchcv's releases; and
the one loader of a released model for experiments (``pretrained_model``)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from torch import nn

from ..errors import ConfigError, WeightsError
from .pytorchcv_weights import fetch_pytorchcv_state_dict
from .registry import create_model, default_cfg
from .weights import fetch_state_dict, find_local, hub_checkpoint_dir, weights_dir


def locate_weights(name: str, **model_kwargs) -> Path | None:
    """The local file that ``create_model(name, pretrained=True, **model_kwargs)`` would load: ``weights=``,
    a copy in ``$BAGNET_WEIGHTS_DIR``, or the torch hub cache's; None: it would download."""
    if model_kwargs.get("weights"):
        return Path(model_kwargs["weights"]).expanduser()
    release = default_cfg(name, **model_kwargs)
    if release is None:
        return None
    file = release["file"]
    if "sha1" in release:  # a pytorchcv release (bagnet.models.pytorchcv_weights)
        pattern = f"{release['arch']}-[0-9][0-9][0-9][0-9]-*.pth*"
        found = (find_local(file, weights_dir()) or find_local(file + ".zip", weights_dir())
                 or find_local(file, weights_dir(), pattern=pattern))
    else:
        found = find_local(file, weights_dir())
    cached = hub_checkpoint_dir() / file
    return found or (cached if cached.is_file() else None)


def check_weights(name: str, **model_kwargs) -> str:
    """Fetch (read, hash-check, or download) the ImageNet weights of model ``name`` now, by the path its
    builder takes, without building it; returns the release file name. WeightsError (one line: the
    file, its url, where to put it) when they cannot be had."""
    release = default_cfg(name, **model_kwargs)
    if release is None:
        raise WeightsError(f"model '{name}' has no pretrained release")
    if "sha1" in release:
        fetch_pytorchcv_state_dict(release["arch"], model_kwargs.get("weights"), cfg=release)
    else:
        fetch_state_dict(release["url"], release["file"], model_kwargs.get("weights"))
    return release["file"]


def pretrained_model(spec: Mapping, data, what: str, weights_dir: str | None = None) -> nn.Module:
    """A released model as published (its weights, its classes), refused before loading when the data it will
    see (anything with ``mean``, ``std``, ``num_classes``: a DataBundle) differs from what it was trained on (number of classes, normalisation). Weights: ``spec.weights``, else
    the release file in ``weights_dir`` (:func:`bagnet.models.weights.find_local`, the one finder), else the
    hash-checked download or hub cache."""
    spec = dict(spec)
    release = default_cfg(spec["name"], **{k: v for k, v in spec.items() if k not in ("name", "tag")})
    if release is None:
        raise ConfigError(f"{what}: model '{spec['name']}' has no pretrained release")
    if tuple(release["mean"]) != tuple(data.mean) or tuple(release["std"]) != tuple(data.std):
        raise ConfigError(f"{what}: its weights expect mean {tuple(release['mean'])} / std {tuple(release['std'])}, "
                          f"the data normalises with {tuple(data.mean)} / {tuple(data.std)}")
    if data.num_classes != release["num_classes"]:
        raise ConfigError(f"{what}: its release predicts {release['num_classes']} classes, the data has "
                          f"{data.num_classes} (ImageNet subsets: data.label_space=imagenet1k)")
    found = find_local(release["file"], weights_dir)
    spec["weights"] = spec.get("weights") or (str(found) if found else None)
    spec["pretrained"] = True
    return create_model(**spec, num_classes=release["num_classes"])
