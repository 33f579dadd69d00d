"""15-Scene (Lazebnik, Schmid & Ponce, CVPR 2006) with the reproducibility report's split.

Layouts accepted under ``root``:

* ``train/<class>/`` + ``test/<class>/``: the common 100-per-class training split (e.g. the CS143 copy);
* ``<class>/``: the original flat ``scene_categories`` release; the 100 training images per class are then
  drawn here (seeded, ``train_per_class``) and the rest are the test pool.

Protocol (all seeded by the run seed, reproducible, independent of file-system order):

* the 1500 training images are split per class 80/20 -> 1200 train + 300 val;
* 80 per class are drawn from the test pool -> 1200 test.

Class index order: the 15 names sorted case-insensitively, which is the usual order of the dataset's
tables: bedroom=0, CALsuburb, industrial, kitchen, livingroom, MITcoast, MITforest, MIThighway,
MITinsidecity, MITmountain, MITopencountry, MITstreet, MITtallbuilding, PARoffice, store=14.

Duplicates: the dataset holds 18 pairs of byte-identical files, some across train/test and one across two
classes. With ``drop_duplicates: true`` (default) val images that duplicate a train image are dropped,
and the test draw takes its 80 per class only from images that duplicate no train/val image (nor an
earlier test image), so test stays at 1200. ``info['duplicates']`` reports what was found and dropped.
Images are grayscale JPEGs of varied sizes; they load as 3-channel RGB.
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

from .bundle import DataError
from .folder import list_class_folder, make_bundle, stratified_split

log = logging.getLogger(__name__)

SCENE15_CLASSES = ["bedroom", "CALsuburb", "industrial", "kitchen", "livingroom", "MITcoast", "MITforest",
                   "MIThighway", "MITinsidecity", "MITmountain", "MITopencountry", "MITstreet",
                   "MITtallbuilding", "PARoffice", "store"]
LAYOUT = ("root/train/<class>/*.jpg + root/test/<class>/*.jpg, or the flat release root/<class>/*.jpg, "
          "with the 15 scene classes")
_HASHES: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha1; per process


def file_hash(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        with open(path, "rb") as f:
            _HASHES[key] = hashlib.sha1(f.read()).hexdigest()
    return _HASHES[key]


def _check_classes(found, where: Path):
    missing = [c for c in SCENE15_CLASSES if c not in found]
    extra = [c for c in found if c not in SCENE15_CLASSES]
    if missing or extra:
        raise DataError(f"{where} is not 15-Scene: missing classes {missing}, unexpected {extra}; expected {LAYOUT}")


def list_scene15(root: Path, seed: int, train_per_class: int = 100) -> tuple[list, list, str]:
    """(training pool, test pool) as (path, label) lists, and the layout name."""
    if not root or not Path(root).is_dir():
        raise DataError(f"data root {root} not found; expected {LAYOUT}; set data.root=/path/to/scene15 "
                        "(or SCENE15_ROOT; make: DATA_ROOT=/path/to/scene15); get it with scripts/get_scene15.py")
    root = Path(root)
    cidx = {c: i for i, c in enumerate(SCENE15_CLASSES)}
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise DataError(f"data root {root} has train/ but no test/; expected {LAYOUT}")
        tr, te = list_class_folder(root / "train", "scene15 train"), list_class_folder(root / "test", "scene15 test")
        _check_classes(tr, root / "train")
        _check_classes(te, root / "test")
        pool = [(str(p), cidx[c]) for c in SCENE15_CLASSES for p in tr[c]]
        test = [(str(p), cidx[c]) for c in SCENE15_CLASSES for p in te[c]]
        return pool, test, "train/test"
    flat = list_class_folder(root, "scene15")
    _check_classes(flat, root)
    rng = random.Random(f"scene15-trainpool:{seed}")
    pool, test = [], []
    for c in SCENE15_CLASSES:
        files = [str(p) for p in flat[c]]
        rng.shuffle(files)
        pool += [(p, cidx[c]) for p in sorted(files[:train_per_class])]
        test += [(p, cidx[c]) for p in sorted(files[train_per_class:])]
    return pool, test, "flat"


def split_scene15(pool, test_pool, seed: int, val_fraction: float = 0.2, test_per_class: int = 80,
                  drop_duplicates: bool = True) -> tuple[list, list, list, dict]:
    """The report's train/val/test lists and a duplicates report (see module docstring)."""
    h = {p: file_hash(p) for p, _ in pool + test_pool}
    if drop_duplicates:
        train, val = _grouped_val_split(pool, h, val_fraction, seed)
    else:
        train, val = stratified_split(pool, val_fraction, seed, "scene15-val")
    seen: dict[str, str] = {}
    pairs = []
    for p, _ in sorted(pool + test_pool):
        if h[p] in seen:
            pairs.append((seen[h[p]], p))
        else:
            seen[h[p]] = p
    report = {"identical_pairs_found": len(pairs), "val_dropped": [], "test_excluded": []}
    if drop_duplicates:
        train_h = {h[p] for p, _ in train}
        report["val_dropped"] = [p for p, _ in val if h[p] in train_h]
        val = [(p, y) for p, y in val if h[p] not in train_h]
    taken = {h[p] for p, _ in train + val}
    by_class: dict[int, list] = {}
    for p, y in sorted(test_pool):
        if drop_duplicates and h[p] in taken:
            report["test_excluded"].append(p)
            continue
        taken.add(h[p])
        by_class.setdefault(y, []).append((p, y))
    rng = random.Random(f"scene15-test:{seed}")
    test = []
    for y in sorted(by_class):
        items = by_class[y][:]
        rng.shuffle(items)
        if len(items) < test_per_class:
            log.warning("scene15: class %d has only %d test images (wanted %d)", y, len(items), test_per_class)
        test += items[:test_per_class]
    test.sort(key=lambda t: (t[1], t[0]))
    report["val_dropped_count"] = len(report["val_dropped"])
    report["test_excluded_count"] = len(report["test_excluded"])
    return train, val, test, report


def _grouped_val_split(pool, h: dict, fraction: float, seed: int) -> tuple[list, list]:
    """Stratified 80/20 split that keeps byte-identical files on the same side, so val needs no drops
    and stays at exactly 20 per class (a pair is skipped when only one val slot is left)."""
    rng = random.Random(f"scene15-val:{seed}")
    train, val = [], []
    for y in sorted({y for _, y in pool}):
        groups: dict[str, list] = {}
        for p, yy in sorted(pool):
            if yy == y:
                groups.setdefault(h[p], []).append((p, y))
        order = list(groups.values())
        rng.shuffle(order)
        k = round(sum(map(len, order)) * fraction)
        for g in order:
            (val if len(g) <= k - sum(1 for _, yy in val if yy == y) else train).extend(g)
    key = lambda t: (t[1], t[0])  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def build_scene15(cfg: dict, seed: int, mean, std):
    root = cfg.get("root")
    pool, test_pool, layout = list_scene15(Path(root) if root else None, seed, int(cfg.get("train_per_class", 100)))
    train, val, test, dup = split_scene15(pool, test_pool, seed, float(cfg.get("val_fraction", 0.2)),
                                          int(cfg.get("test_per_class", 80)), bool(cfg.get("drop_duplicates", True)))
    if dup["val_dropped_count"] or dup["test_excluded_count"]:
        log.info("scene15: %d byte-identical pairs; dropped %d val images duplicating train; %d test-pool "
                 "images excluded as duplicates", dup["identical_pairs_found"], dup["val_dropped_count"],
                 dup["test_excluded_count"])
    info = {"root": str(root), "layout": layout, "duplicates": dup,
            "duplicates_dropped": dup["val_dropped_count"] + dup["test_excluded_count"],
            "protocol": "1500 train images -> 80/20 per class train/val; 80 per class test from the test pool"}
    return make_bundle(cfg, train, val, test, SCENE15_CLASSES, mean, std, info)
