"""Small helpers used across the library and the experiments."""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel / DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def jsonable(obj: Any) -> Any:
    """Plain Python for JSON: tensors, numpy scalars and arrays, paths; non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised [..., 3, H, W] -> displayable values in [0, 1] (same dtype)."""
    m = torch.as_tensor(mean, dtype=images.dtype).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(3, 1, 1)
    return (images * s + m).clamp(0, 1)


def has_narrow_convs_on_cpu(device: torch.device | str, model: nn.Module) -> bool:
    """True on CPU for models with convolutions narrower than 16 channels. torch 2.14.1's CPU
    channels_last (NHWC) kernels segfaulted intermittently for such nets (BagNet width 4-8, fp32 and
    bf16, eager and inductor); NCHW never did. Callers keep those nets in NCHW."""
    return torch.device(device).type == "cpu" and any(
        m.out_channels < 16 for m in model.modules() if isinstance(m, nn.Conv2d))


def refused_content(err: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused in a file, in a few words (its message is a page
    that suggests ``weights_only=False``, which would run the file's code)."""
    import re
    m = re.search(r"Unsupported (global: GLOBAL \S+|operand \S+|[^\n]*)", str(err))
    what = m.group(0).strip().rstrip(".") if m else ""
    return "it holds more than tensors and plain containers" + (f" ({what})" if what else "")
