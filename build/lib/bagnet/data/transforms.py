"""Image transforms for photos (the synthetic probe needs none).

train: RandomResizedCrop(S, scale=(0.35, 1)) + horizontal flip. The standard (0.08, 1) was tuned for
  ImageNet's 1.28M images and long schedules; for 15-Scene (1200 training images, short schedules,
  scene layout matters) crops that keep >= 35% of the image keep the scene recognisable.
  Set ``crop_scale: [0.08, 1.0]`` in the data config for the ImageNet recipe.
eval:  Resize(int(S * 256 / 224)) + CenterCrop(S), the standard ratio.
``resize: squash`` (the COMP6248 notebooks' ``Resize((S, S))``): eval images are squashed to S x S, no crop;
``train_augment: false``: training images get the eval transform (the notebooks used one transform for all).
Both: ImageNet mean/std (so pretrained torchvision and BagNet weights see what they were trained on).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms as T

from ..constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (the default normalisation)

DEFAULT_CROP_SCALE = (0.35, 1.0)


class ToNormalizedTensor:
    """PIL RGB image -> normalised float32 [3, H, W], computed in numpy.

    Same result as ToTensor() + Normalize(mean, std), but never enters torch's intra-op thread pool:
    on a busy 2-core machine the parallel elementwise ops on one ~40k-element image cost ~40 ms of
    OpenMP spinning (measured: 25 vs 1460 images/s with 2 vs 1 torch threads, scripts/bench_data.py)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.inv_std = 1.0 / (np.asarray(std, np.float32) * 255.0)

    def __call__(self, img) -> torch.Tensor:
        a = np.asarray(img, dtype=np.float32)
        a = (a - self.mean) * self.inv_std
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def normalize_uint8(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [3, H, W] (numpy) -> normalised float32 tensor, in numpy for the same reason."""
    m = np.asarray(mean, np.float32).reshape(3, 1, 1) * 255.0
    s = np.asarray(std, np.float32).reshape(3, 1, 1) * 255.0
    return torch.from_numpy((images.astype(np.float32) - m) / s)


def resize_size(image_size: int) -> int:
    return int(image_size * 256 / 224)


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_scale=DEFAULT_CROP_SCALE,
                    flip: bool = True, augment: bool = True, resize: str = "crop"):
    if not augment:
        return eval_transform(image_size, mean, std, resize)
    ops = [T.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + [ToNormalizedTensor(mean, std)])


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: str = "crop"):
    if resize == "squash":   # torchvision's Resize((S, S)) on a PIL image: PIL bilinear, as the notebooks ran it
        return T.Compose([T.Resize((image_size, image_size), antialias=True), ToNormalizedTensor(mean, std)])
    if resize != "crop":
        raise ValueError(f"resize must be crop or squash, not {resize!r}")
    return T.Compose([T.Resize(resize_size(image_size), antialias=True), T.CenterCrop(image_size),
                      ToNormalizedTensor(mean, std)])
