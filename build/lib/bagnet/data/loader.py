"""The one loader stack, for training, evaluation and scripts.

Determinism: the sampler yields ``(epoch, index)`` and :class:`SeededDataset` seeds the augmentation
RNG from (seed, epoch, index), so the data a step sees depends on nothing but the seed and the step,
whatever the number of workers and whether the run was resumed. Under DDP, training shards are padded
to equal length (every rank takes the same number of steps); evaluation shards are not, so each image
counts exactly once when the ranks' predictions are gathered.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..distributed import DistInfo
from ..seeding import generator, sample_seed

__all__ = ["EpochSampler", "SeededDataset", "build_loader", "capped"]


class EpochSampler(Sampler):
    """Seeded per-epoch permutation (or the dataset order), sharded over ranks; yields (epoch, index)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.n, self.seed, self.shuffle, self.rank, self.world, self.pad = n, seed, shuffle, rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        idx = (torch.randperm(self.n, generator=generator(self.seed, self.epoch)).tolist() if self.shuffle
               else list(range(self.n)))
        if self.pad and self.world > 1:
            total = math.ceil(self.n / self.world) * self.world
            idx += idx[: total - self.n]
        return idx[self.rank:: self.world]

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.indices()])

    def __len__(self) -> int:
        return len(self.indices())


class SeededDataset(Dataset):
    """Wraps a dataset so item (epoch, i) is produced under a RNG seeded by (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, i))
            return self.dataset[i]


def build_loader(dataset: Dataset, batch_size: int, train: bool, seed: int = 0,
                 dist_info: DistInfo = DistInfo(), workers: int = 0,
                 device: torch.device | str = "cpu") -> DataLoader:
    """train: a seeded shuffle per epoch (call ``loader.sampler.set_epoch(e)``), padded shards under DDP;
    eval: dataset order, unpadded shards. Batches are (images, labels); the last batch may be short (in
    training not a single image)."""
    sampler = EpochSampler(len(dataset), seed, shuffle=train, rank=dist_info.rank,
                           world_size=dist_info.world_size, pad=train)
    # training drops a last batch of one image only: BatchNorm cannot normalise a single sample
    drop_last = train and batch_size > 1 and len(sampler) % batch_size == 1
    return DataLoader(SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, persistent_workers=workers > 0, drop_last=drop_last,
                      pin_memory=torch.device(device).type == "cuda")


def capped(dataset, max_images: int | None, seed: int):
    """``dataset``, or a seeded random subset of ``max_images`` of it (in dataset order) for smoke runs."""
    if not max_images or max_images >= len(dataset):
        return dataset
    keep = sorted(torch.randperm(len(dataset), generator=generator(seed, 11))[:max_images].tolist())
    subset = Subset(dataset, keep)
    if hasattr(dataset, "samples"):      # predictions name each image's file
        subset.samples = [dataset.samples[i] for i in keep]
    return subset
