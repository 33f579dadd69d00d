"""Datasets: one entry point, ``build_data(cfg, seed) -> DataBundle``; loaders in :mod:`bagnet.data.loader`.

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
from typing import Mapping

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .bundle import DataBundle, DataError
from .loader import build_loader

log = logging.getLogger(__name__)

__all__ = ["DataBundle", "DataError", "build_data", "build_loader"]

BUILDERS = ("synthetic", "scene15", "imagenet", "imagenette", "imagefolder")


def _plain(cfg: Mapping) -> dict:
    from omegaconf import DictConfig, OmegaConf
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def build_data(cfg: Mapping, seed: int = 0) -> DataBundle:
    """Build the train/val/test datasets named by ``cfg['name']``; splits are seeded by ``seed``."""
    cfg = _plain(cfg)
    name = cfg.get("name")
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    if name == "synthetic":
        from .synthetic import build_synthetic as build
    elif name == "scene15":
        from .scene15 import build_scene15 as build
    elif name in ("imagenet", "imagenette"):
        from .imagenet import build_imagenet as build
    elif name == "imagefolder":
        from .folder import build_imagefolder as build
    else:
        raise DataError(f"unknown data '{name}'; valid: {', '.join(BUILDERS)}")
    bundle = build(cfg, seed, mean, std)
    bundle.info.setdefault("name", name)
    log.info("data %s: %s", name, {k: v for k, v in bundle.info.items() if k in ("sizes", "duplicates_dropped")})
    return bundle
