"""What every dataset builder returns: train/val/test datasets, class names, normalisation, info."""
from __future__ import annotations

from dataclasses import dataclass, field
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

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split '{name}'; valid: train, val, test")
        return {"train": self.train, "val": self.val, "test": self.test}[name]
