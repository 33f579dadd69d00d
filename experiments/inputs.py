"""What experiments run on and how they run models: one split of the data (:class:`SplitData`), seeded
subsets of its images, batches, forwards, and the occluders that hide image parts."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")  # experiments build Figure objects only; never open a window

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bagnet.errors import ConfigError  # noqa: E402
from bagnet.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from bagnet.seeding import generator  # noqa: E402


@dataclass
class SplitData:
    """What an experiment runs on: one split's images with the data's class names and normalisation."""
    dataset: Dataset
    classes: list
    mean: tuple
    std: tuple
    image_size: int | None = None    # the size the models see (images of other sizes are resized to it)


def resolve_data(data, classes=None, mean=None, std=None, split: str = "test"):
    """(dataset, classes, mean, std) of what an experiment was given: a :class:`SplitData` (what the suite
    passes), a :class:`~bagnet.data.DataBundle` (its ``split``), or a bare Dataset or list of (image, label)
    (its ``classes`` attribute, if any). Arguments that are given win; missing mean/std are ImageNet's (for display only)."""
    from bagnet.data.bundle import DataBundle
    if isinstance(data, SplitData):
        classes, mean, std, data = (classes if classes is not None else data.classes, mean or data.mean,
                                    std or data.std, data.dataset)
    elif isinstance(data, DataBundle):
        classes, mean, std, data = (classes if classes is not None else data.classes, mean or data.mean,
                                    std or data.std, data.split(split))
    elif not isinstance(data, (Dataset, Sequence)):
        raise TypeError(f"an experiment runs on a SplitData, a DataBundle, a Dataset or a sequence of (image, label), "
                        f"not {type(data).__name__}")
    if classes is None:
        classes = getattr(data, "classes", None)
    return data, classes, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)


def eval_indices(n_total: int, num: int | None, seed: int) -> list[int]:
    """Sorted seeded subset of ``num`` dataset indices (all when num is None or >= n_total)."""
    if num is None or num >= n_total:
        return list(range(n_total))
    perm = torch.randperm(n_total, generator=generator(seed, 7))[:num]
    return sorted(perm.tolist())


def dataset_labels(dataset) -> list[int]:
    """Every image's label, without decoding images where the dataset knows them (``targets``, a Subset's parent's)."""
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if getattr(dataset, "targets", None) is not None:
        return [int(y) for y in dataset.targets]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def class_indices(names: Sequence[str], classes: Sequence[str], where: str) -> list[int]:
    """The indices of ``names`` among ``classes`` (ids such as wnids, or display names); a name that is neither is
    a ConfigError naming ``where``."""
    from bagnet.data.names import display_names
    ids = {c: i for i, c in enumerate(classes)} | {n: i for i, n in enumerate(display_names(classes))}
    unknown = [n for n in names if n not in ids]
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not classes of the data")
    return [ids[n] for n in names]


def _collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.as_tensor([int(y) for _, y in items], dtype=torch.long))


def loader(dataset, indices, batch_size: int) -> DataLoader:
    """The images ``indices`` of ``dataset`` in order, as torch's DataLoader gives them (the library's path)."""
    return DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=max(1, batch_size), shuffle=False,
                      num_workers=0, collate_fn=_collate)


def load_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``indices`` as one batch (images [B, C, H, W], labels [B])."""
    if not len(indices):
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return next(iter(loader(dataset, indices, len(indices))))


def iter_batches(dataset, indices, batch_size: int, progress: bool = True, desc: str = "") \
        -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, images, labels) in chunks of ``batch_size``, with a tqdm bar."""
    indices = [int(i) for i in indices]
    batches = loader(dataset, indices, batch_size)
    for k, (images, labels) in enumerate(tqdm(batches, desc=desc, leave=False, disable=not progress,
                                              dynamic_ncols=True)):
        yield indices[k * batch_size: (k + 1) * batch_size], images, labels


def prepare_model(model: nn.Module, device, dtype=None) -> nn.Module:
    """Eval mode on ``device``; with ``dtype`` a converted copy, so the caller's model is never altered."""
    if dtype is not None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
    return model.to(device).eval()


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


OCCLUDERS = ("zero", "gray", "dataset_mean", "blur")


def occluder_fill(image: torch.Tensor, kind: str, mean, std, blur_sigma: float = 4.0,
                  dataset_mean: torch.Tensor | None = None) -> torch.Tensor:
    """What occluded pixels become ([C, H, W] or [B, C, H, W]), in normalised space.

    zero: the normalisation mean colour (the paper's choice; for ImageNet statistics a tinted gray);
    gray: RGB (0.5, 0.5, 0.5); dataset_mean: ``dataset_mean`` ([C], normalised), the mean colour of the
    evaluated images (neutral for grayscale data such as 15-Scene); blur: a Gaussian blur of the image."""
    shape = (-1, 1, 1)
    if kind == "zero":
        return torch.zeros_like(image)
    if kind == "gray":
        m = torch.as_tensor(mean, dtype=image.dtype).view(shape)
        s = torch.as_tensor(std, dtype=image.dtype).view(shape)
        return ((0.5 - m) / s).expand_as(image).clone()
    if kind == "dataset_mean":
        if dataset_mean is None:
            raise ValueError("occluder 'dataset_mean' needs the images' mean colour")
        return torch.as_tensor(dataset_mean, dtype=image.dtype).view(shape).expand_as(image).clone()
    if kind == "blur":
        k = 2 * int(np.ceil(3 * blur_sigma)) + 1
        batch = image if image.dim() == 4 else image[None]
        out = TF.gaussian_blur(batch, [k, k], [blur_sigma, blur_sigma])
        return out if image.dim() == 4 else out[0]
    raise ConfigError(f"unknown occluder '{kind}'; valid: {', '.join(OCCLUDERS)}")


def mean_colour(dataset, indices, batch_size: int = 64) -> torch.Tensor:
    """Per-channel mean of the images ``indices`` (normalised space)."""
    total, count = None, 0
    for _, images, _ in iter_batches(dataset, indices, batch_size, progress=False):
        s = images.double().sum((0, 2, 3))
        total = s if total is None else total + s
        count += images.shape[0] * images.shape[2] * images.shape[3]
    return (total / max(count, 1)).float()
