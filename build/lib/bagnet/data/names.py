"""Class names as a reader sees them: ImageNet wnids become their English names (torchvision's weight
metadata ships them, no download); every other class name (15-Scene, image folders, the probe) is shown as
it is. Tables keep the id beside the name."""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def imagenet_names() -> dict[str, str]:
    """wnid -> English name (first synonym) of the 1000 ILSVRC2012 classes."""
    from torchvision.models import ResNet50_Weights
    from .imagenet import imagenet_wnids
    return dict(zip(imagenet_wnids(), ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))


def display_names(classes: Sequence[str]) -> list[str]:
    """``classes`` with every ImageNet wnid replaced by its name."""
    return [imagenet_names().get(c, c) if WNID.fullmatch(str(c)) else str(c) for c in classes]
