"""Where each model's pretrained release file is (``locate_weights``) and whether it can be had now
(``check_weights``), for any registered model: the authors' BagNets, torchvision's and pytorchcv's releases."""
from __future__ import annotations

from pathlib import Path

from ..errors import WeightsError
from .pytorchcv_weights import fetch_pytorchcv_state_dict
from .registry import default_cfg
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
