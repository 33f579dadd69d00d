"""Helpers shared by the signature experiments: config defaults, data access, seeding, batched forwards."""
from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping

import matplotlib

matplotlib.use("Agg")  # experiments build Figure objects only; never open a window

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys every experiment understands (module DEFAULTS extend these).
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": "cpu",
    "batch_size": 64,
    "num_images": 256,     # evaluation images: the first ``num_images`` of a seeded permutation (None = all)
    "dtype": None,         # None: the model's own dtype; "float64" runs on a float64 copy (exactness checks)
    "progress": True,
}


def with_defaults(cfg: Mapping | None, defaults: Mapping) -> dict:
    """``cfg`` over ``COMMON_DEFAULTS`` and the module's ``defaults``; unknown keys are an error (typos)."""
    merged = {**COMMON_DEFAULTS, **defaults}
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(merged))
    if unknown:
        raise KeyError(f"unknown config key(s) {unknown}; known: {sorted(merged)}")
    merged.update(cfg)
    return merged


def generator(seed: int, *salt: int) -> torch.Generator:
    """A local CPU generator seeded from ``seed`` and integer ``salt`` (e.g. an image index), so a
    draw for one image does not depend on which other images are evaluated or in what order."""
    s = int(seed)
    for v in salt:
        s = (s * 1_000_003 + int(v)) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(s)


def seed_everything(seed: int) -> None:
    """Global seeds too, for third-party code (captum) that draws from the global RNG."""
    import random
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_data(data, classes=None, mean=None, std=None, split: str = "test"):
    """Accept a Dataset, a DataBundle (uses ``split``), or anything with ``.dataset``; returns
    (dataset, classes, mean, std). Missing mean/std fall back to ImageNet's (for display only)."""
    if hasattr(data, "split") and hasattr(data, "train"):        # DataBundle
        classes = classes if classes is not None else data.classes
        mean, std = mean or data.mean, std or data.std
        data = data.split(split)
    elif hasattr(data, "dataset") and not isinstance(data, Dataset):
        classes = classes if classes is not None else getattr(data, "classes", None)
        mean, std = mean or getattr(data, "mean", None), std or getattr(data, "std", None)
        data = data.dataset
    if classes is None:
        classes = getattr(data, "classes", None)
    return data, classes, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)


def eval_indices(n_total: int, num: int | None, seed: int) -> list[int]:
    """Sorted seeded subset of ``num`` dataset indices (all when num is None or >= n_total)."""
    if num is None or num >= n_total:
        return list(range(n_total))
    perm = torch.randperm(n_total, generator=generator(seed, 7))[:num]
    return sorted(perm.tolist())


def load_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([torch.as_tensor(x) for x, _ in items])
    labels = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
    return images, labels


def iter_batches(dataset, indices, batch_size: int, progress: bool = True, desc: str = "") \
        -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, images, labels) in chunks of ``batch_size``, with a tqdm bar."""
    chunks = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    for idx in tqdm(chunks, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images, labels = load_batch(dataset, idx)
        yield idx, images, labels


def prepare_model(model: nn.Module, device, dtype=None) -> nn.Module:
    """Eval mode on ``device``; with ``dtype`` a converted copy, so the caller's model is never altered."""
    if dtype is not None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
    return model.to(device).eval()


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def forward(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``images`` (moved to the model's device/dtype) in batches; returned on the CPU."""
    p = next(model.parameters())
    out = [model(images[i: i + batch_size].to(p.device, p.dtype)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B]: label among the top-k logits (k capped at the number of classes)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1)


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised [.., 3, H, W] -> displayable [0, 1]."""
    m = torch.as_tensor(mean, dtype=images.dtype).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype).view(3, 1, 1)
    return (images * s + m).clamp(0, 1)


def to_hwc(image: torch.Tensor, mean, std) -> np.ndarray:
    return denormalize(image.detach().cpu().float(), mean, std).permute(1, 2, 0).numpy()


def jsonable(obj):
    """Recursively turn numpy / torch scalars into plain Python for ``Result.raw``."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
