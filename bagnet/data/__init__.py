"""Datasets: one entry point, ``build_data(cfg, seed) -> DataBundle``, and ``make_loader``.

Each dataset item is (normalized float image [3, S, S], int label); ``dataset.samples`` lists
(path or id, label) in item order, so predictions can name their images, and ``dataset.classes``
the class names in label order.

``cfg`` is the data config (configs/data/<name>.yaml, a dict or DictConfig):

* ``synthetic``   generated in memory from the seed, known ground truth (synthetic.py)
* ``scene15``     15-Scene with the reproducibility report's 1200/300/1200 split (scene15.py)
* ``imagenet``    ILSVRC2012 ``train/<wnid>/``, ``val/<wnid>/``; 1000-way or compact labels (imagenet.py)
* ``imagefolder`` any ``<split>/<class>/`` tree (folder.py)

Errors the user can fix (missing root, wrong layout, empty class folder) raise :class:`DataError` with
one line that says what was expected and which key to set.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

__all__ = ["DataBundle", "DataError", "build_data", "make_loader", "ShardSampler"]


class DataError(ValueError):
    """A data problem the user can fix; the message is one line."""


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)   # split sizes, duplicates dropped, ...

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def _plain(cfg: Mapping) -> dict:
    try:  # DictConfig -> dict with interpolations resolved
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def build_data(cfg: Mapping, seed: int = 0) -> DataBundle:
    """Build the train/val/test datasets named by ``cfg['name']``; splits are seeded by ``seed``."""
    cfg = _plain(cfg)
    name = cfg.get("name")
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    if name == "synthetic":
        from .synthetic import build_synthetic
        bundle = build_synthetic(cfg, seed, mean, std)
    elif name == "scene15":
        from .scene15 import build_scene15
        bundle = build_scene15(cfg, seed, mean, std)
    elif name in ("imagenet", "imagenette"):
        from .imagenet import build_imagenet
        bundle = build_imagenet(cfg, seed, mean, std)
    elif name == "imagefolder":
        from .folder import build_imagefolder
        bundle = build_imagefolder(cfg, seed, mean, std)
    else:
        raise DataError(f"unknown data '{name}'; valid: synthetic, scene15, imagenet, imagenette, imagefolder")
    bundle.info.setdefault("name", name)
    log.info("data %s: %s", name, {k: v for k, v in bundle.info.items() if k in ("sizes", "duplicates_dropped")})
    return bundle


class ShardSampler(Sampler):
    """Rank r takes items r, r+W, r+2W, ... in order, with no padding: every item is seen exactly once
    over all ranks (shards differ in length by at most one). For evaluation under DDP; the caller
    gathers per-rank predictions (keyed by index) instead of averaging per-rank metrics."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_init(worker_id: int) -> None:
    # Each worker's torch RNG is already seeded by the loader's generator; align numpy/random with it
    # so any augmentation that uses them is reproducible too.
    import random

    import numpy as np
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int = 2, distributed: bool = False,
                seed: int = 0, device: str = "cpu", drop_last: bool | None = None) -> DataLoader:
    """DataLoader with the project's conventions.

    * train: shuffled with a generator seeded by ``seed`` (same order for the same seed); drops the
      last incomplete batch by default, so BatchNorm never sees a batch of one.
    * eval: in order, nothing dropped.
    * distributed (torch.distributed initialised): train uses DistributedSampler (call
      ``loader.sampler.set_epoch(e)``); eval uses :class:`ShardSampler`, which does not pad, so no
      image is counted twice: gather predictions from all ranks (or evaluate on rank 0 only).
    * pin_memory on CUDA; persistent_workers when workers > 0.
    """
    if drop_last is None:
        drop_last = train and len(dataset) > batch_size
    sampler, shuffle, generator = None, False, None
    if distributed:
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("make_loader(distributed=True) needs torch.distributed to be initialised")
        if train:
            sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last)
        else:
            sampler = ShardSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    elif train:
        shuffle, generator = True, torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
                      num_workers=workers, persistent_workers=workers > 0, drop_last=drop_last,
                      pin_memory=str(device).startswith("cuda"),
                      worker_init_fn=_worker_init if workers > 0 else None)
