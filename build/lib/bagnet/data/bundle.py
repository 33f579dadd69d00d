"""What every dataset builder returns: train/val/test datasets, class names, normalisation, info."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from torch.utils.data import Dataset

from ..errors import DataError

__all__ = ["DataBundle", "DataError"]


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

    def fingerprint(self) -> str | None:
        """sha256 of every split's (file name, label) list: a file added, removed or moved between classes
        under the same data.root changes it. None for data held in memory (made from the config)."""
        lists = [getattr(self.split(s), "samples", None) for s in ("train", "val", "test")]
        if any(samples is None for samples in lists):
            return None
        h = hashlib.sha256("\n".join(self.classes).encode())
        for split, samples in zip(("train", "val", "test"), lists):
            for path, label in samples:   # class folder / file name: the same data under another root matches
                h.update(f"\n{split}\t{PurePath(path).parent.name}/{PurePath(path).name}\t{label}".encode())
        return h.hexdigest()

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split '{name}'; valid: train, val, test")
        return {"train": self.train, "val": self.val, "test": self.test}[name]
