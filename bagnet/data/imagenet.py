"""ImageNet (ILSVRC2012) and wnid subsets of it (Imagenette, imagenette-mini) in the folder layout
``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG``.

Labels (``label_space``):

* ``imagenet1k`` (default): the standard 1000-class index = position of the wnid in the sorted list of the
  1000 ILSVRC2012 wnids (``imagenet_wnids.txt``, the order of torchvision's and the BagNet release's
  output units; tench n01440764 = 0, parachute n03888257 = 701). ``classes`` is all 1000 wnids, so
  pretrained heads apply to a subset too.
* ``compact``: 0..K-1 over the wnids present (sorted), for training a K-way head from scratch.

Splits: the ILSVRC2012 test labels are not public, so the official val set is the test split. ``val``
is the same official val set by default (``val_from_train: 0``), the usual choice when evaluating
pretrained models; with ``val_from_train: f`` a seeded stratified fraction f of train is held out as val
(model selection without touching test). ``train/`` may be missing for evaluation-only use.
A flat ``val/`` (the tar as distributed) must first be sorted into wnid folders with
``scripts/prepare_imagenet_val.py``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .bundle import DataError
from .folder import IMAGE_EXTENSIONS, list_class_folder, make_bundle, stratified_split

LAYOUT = "root/train/<wnid>/*.JPEG and root/val/<wnid>/*.JPEG"


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 wnids in class-index order (sorted). Transcribed from the LOC_synset_mapping.txt
    of the ImageNet localization challenge (Kaggle) and checked: sorted, unique, 1000, and the Imagenette
    classes land on their well-known indices (tests/test_data.py)."""
    wnids = tuple((Path(__file__).with_name("imagenet_wnids.txt")).read_text().split())
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids), "imagenet_wnids.txt is damaged"
    return wnids


def build_imagenet(cfg: dict, seed: int, mean, std):
    root = cfg.get("root")
    if cfg.get("name") == "imagenette":
        hint = "set data.root=/path/to/imagenette (or IMAGENETTE_ROOT; make train: DATA_ROOT=/path/to/imagenette)"
    else:
        hint = ("set data.root=/path/to/imagenet (or IMAGENET_ROOT; make eval-imagenet / make reproduce-paper: "
                "IMAGENET_ROOT=/path/to/imagenet; make train: DATA_ROOT=/path/to/imagenet)")
    if not root:
        raise DataError(f"data.root is not set; expected {LAYOUT}; {hint}")
    if not Path(root).is_dir():
        raise DataError(f"data root {root} not found; expected {LAYOUT}; {hint}")
    root = Path(root)
    val_dir = root / cfg.get("val_dir", "val")
    if not val_dir.is_dir():
        if root.name in ("train", "val"):
            raise DataError(f"data.root={root} is a split folder: give its parent ({root.parent}), which holds "
                            "train/ and val/")
        raise DataError(f"data root {root} has no val/ folder; expected {LAYOUT}; {hint}")
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in val_dir.iterdir()):
        raise DataError(f"{val_dir} holds images directly, not <wnid>/ folders; sort it with "
                        "scripts/prepare_imagenet_val.py")
    val_files = list_class_folder(val_dir, "imagenet val")
    train_dir = root / cfg.get("train_dir", "train")
    train_files = list_class_folder(train_dir, "imagenet train") if train_dir.is_dir() else {}

    space = cfg.get("label_space", "imagenet1k")
    present = sorted(set(val_files) | set(train_files))
    if cfg.get("name") == "imagenette":     # a wnid subset of ImageNet, in any label space: every folder a wnid
        wnids = set(imagenet_wnids())
        for split_dir, files in ((val_dir, val_files), (train_dir, train_files)):
            other = sorted(w for w in files if w not in wnids)
            if other:
                raise DataError(f"data=imagenette: the folder {split_dir / other[0]} is not an ILSVRC2012 wnid "
                                f"({len(other)} such folder(s) in {split_dir}); Imagenette's classes are wnid folders "
                                "such as n01440764; for other classes use data=imagefolder")
    if space == "imagenet1k":
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        unknown = [w for w in present if w not in index]
        if unknown:
            raise DataError(f"{root}: folders {unknown[:3]} are not ILSVRC2012 wnids; use "
                            "data.label_space=compact for other classes")
        classes = list(imagenet_wnids())
    elif space == "compact":
        index = {w: i for i, w in enumerate(present)}
        classes = present
    else:
        raise DataError(f"unknown data.label_space={space!r}; valid: imagenet1k, compact")

    def items(files):
        return [(str(p), index[w]) for w in sorted(files) for p in files[w]]

    train, official_val = items(train_files), items(val_files)
    info = {"root": str(root), "label_space": space, "wnids_present": len(present),
            "test": "official ILSVRC2012-layout val/ (test labels are not public)"}
    frac = float(cfg.get("val_from_train") or 0)
    if frac > 0 and train:
        train, val = stratified_split(train, frac, seed, "imagenet-val")
        info["val"] = f"seeded stratified hold-out of {frac} of train/"
    else:
        val = official_val
        info["val"] = "= test (official val/)"
    if not train:
        info["train"] = "missing (evaluation only)"
    return make_bundle(cfg, train, val, official_val, classes, mean, std, info)
