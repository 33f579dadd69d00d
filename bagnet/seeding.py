"""Every seed the suite derives, in one place.

A draw for one image (a scrambling permutation, a random region order) uses a generator seeded by
(seed, salt..., image index), so it does not depend on which other images are evaluated or in what order.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_MUL = 1_000_003


def derive_seed(seed: int, *salt: int) -> int:
    """``seed`` folded with integer ``salt``: seed * 1_000_003 + salt[0], then again for each salt."""
    s = int(seed)
    for v in salt:
        s = (s * _MUL + int(v)) % (2 ** 63 - 1)
    return s


def generator(seed: int, *salt: int) -> torch.Generator:
    """A local CPU generator seeded by :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *salt))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of training sample ``index`` in ``epoch`` (its augmentation draws), below 2^64 (torch's seeds are
    64-bit: a seed of 10^7 overflowed them; every seed that fitted before is unchanged)."""
    return (derive_seed(seed, epoch) * 10_000_019 + int(index)) % 2 ** 64


def seed_everything(seed: int) -> None:
    """Global seeds (python, numpy, torch), for code that draws from the global RNGs (init, captum)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
