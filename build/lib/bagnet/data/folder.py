"""Image files on disk: robust decoding, a list-of-files dataset, and the generic ``imagefolder`` data.

Robust decoding: every PIL mode becomes 8-bit RGB with the right scale (CMYK, palette with or without
transparency, L, LA, 16-bit 'I;16' and 32-bit 'I' PNGs, 'F'). A corrupt or truncated file never stops an
epoch: with ``on_bad_image: skip`` (default) it is logged once, counted in a counter shared with the
loader's worker processes (``dataset.bad_images``), and replaced:

* training split: by the next decodable image of the list (batches keep their size and stay valid);
* evaluation splits: by a mean-colour image with the *true* label, so the item index, its name in
  ``samples`` and every metric's denominator stay exact; the image simply counts as (very likely) wrong.

``on_bad_image: error`` raises instead.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from .bundle import DataBundle, DataError
from .transforms import DEFAULT_CROP_SCALE, eval_transform, resize_size, train_transform

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# Never let PIL "repair" a truncated JPEG silently: we want to know and skip it.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB, scaling high-bit-depth data to 0..255 (not clipping it)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs use the full 0..65535 range; 'I'/'F' have no fixed range: scale by the max.
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if img.mode == "I" and a.max() <= 255:
            top = 255.0
        img = Image.fromarray(np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        # Composite on white, as viewers show it (dropping alpha would expose arbitrary hidden colours).
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as img:
        img.load()          # decode now, inside the try of the caller
        return to_rgb(img)


class ImageListDataset(Dataset):
    """Items ``(transform(image), label)`` for a list of ``(path, label)``.

    ``cache_short_side``: keep decoded images in memory, resized so the short side is this many pixels
    (decode once, not every epoch). Only sensible when every crop the transform takes still has enough
    pixels at that size: true for eval (Resize(S*256/224) + CenterCrop) and for RandomResizedCrop when
    the short side is >= S*256/224 (a crop is then upsampled by at most 256/224 / sqrt(min scale) more
    than from the original; with scale >= 0.35 and 15-Scene's ~256 px originals that is no loss).
    Each worker process has its own cache (fills during the first epoch, persistent workers keep it).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform: Callable,
                 train: bool, on_bad_image: str = "skip", cache_short_side: int | None = None,
                 mean=(0.485, 0.456, 0.406)):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be skip or error, not {on_bad_image!r}")
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.targets = [y for _, y in self.samples]
        self.classes = list(classes)
        self.transform, self.train, self.on_bad_image = transform, train, on_bad_image
        self.cache_short_side = cache_short_side
        self._cache: dict[int, Image.Image] = {}
        self._mean_rgb = tuple(int(round(255 * m)) for m in mean)
        self._bad = mp.Value("i", 0)   # shared with fork-started workers
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def bad_images(self) -> int:
        """Undecodable images met so far (each time it is met; all workers)."""
        return self._bad.value

    def _decode(self, i: int) -> Image.Image:
        if i in self._cache:
            return self._cache[i]
        img = load_rgb(self.samples[i][0])
        if self.cache_short_side:
            w, h = img.size
            s = self.cache_short_side / min(w, h)
            if s < 1:
                img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)
            self._cache[i] = img
        return img

    def _bad_image(self, i: int, err: Exception) -> None:
        if self.on_bad_image == "error":
            raise RuntimeError(f"cannot decode image {self.samples[i][0]}: {err}") from err
        with self._bad.get_lock():
            self._bad.value += 1
        if i not in self._warned:
            self._warned.add(i)
            log.warning("skipping undecodable image %s (%s: %s)", self.samples[i][0], type(err).__name__, err)

    def __getitem__(self, i: int):
        label = self.samples[i][1]
        for k in range(len(self.samples)):
            j = (i + k) % len(self.samples)
            try:
                img = self._decode(j)
            except Exception as err:  # noqa: BLE001  PIL raises many types for bad files
                self._bad_image(j, err)
                if self.train:
                    continue
                img = Image.new("RGB", (256, 256), self._mean_rgb)
                return self.transform(img), label
            return self.transform(img), self.samples[j][1]
        raise RuntimeError("no decodable image in the whole dataset")


# ------------------------------------------------------------------------- listing and splitting
def list_class_folder(root: Path, what: str, class_key=None) -> dict[str, list[Path]]:
    """{class name: sorted image paths} of ``root/<class>/``; DataError for a missing or empty folder."""
    if not root.is_dir():
        raise DataError(f"{what}: {root} not found")
    out = {}
    for d in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=class_key):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{what}: class folder {d} holds no images ({'/'.join(IMAGE_EXTENSIONS)})")
        out[d.name] = files
    if not out:
        raise DataError(f"{what}: {root} has no class folders")
    return out


def stratified_split(samples: Sequence[tuple[str, int]], fraction: float, seed: int, salt: str
                     ) -> tuple[list, list]:
    """Split per class: round(n_c * fraction) items (at least one when n_c > 1) go to the second part.
    Seeded and independent of the order the files were listed in."""
    by_class = defaultdict(list)
    for p, y in sorted(samples):
        by_class[y].append((p, y))
    rng = random.Random(f"{salt}:{seed}")
    first, second = [], []
    for y in sorted(by_class):
        items = by_class[y][:]
        rng.shuffle(items)
        k = round(len(items) * fraction)
        k = max(k, 1) if len(items) > 1 else 0
        second += items[:k]
        first += items[k:]
    return sorted(first, key=_order), sorted(second, key=_order)


def _order(item):
    return item[1], item[0]


def build_imagefolder(cfg: dict, seed: int, mean, std):
    """``root/<split>/<class>/``: train required; val missing -> seeded stratified hold-out of
    ``val_fraction`` of train; test missing -> test = val (recorded in info)."""
    root = cfg.get("root")
    layout = "root/train/<class>/*.jpg (+ optional root/val/, root/test/)"
    if not root or not Path(root).is_dir():
        raise DataError(f"data root {root} not found; expected {layout}; set data.root=/path/to/dataset "
                        "(make: DATA_ROOT=/path/to/dataset)")
    root = Path(root)
    train_dir = root / cfg.get("train_dir", "train")
    if not train_dir.is_dir():
        raise DataError(f"data root {root} has no {train_dir.name}/ folder; expected {layout}")
    train_files = list_class_folder(train_dir, "imagefolder train")
    classes = sorted(train_files)
    cidx = {c: i for i, c in enumerate(classes)}
    train = [(str(p), cidx[c]) for c in classes for p in train_files[c]]
    info = {"root": str(root)}

    def split_dir(name):
        d = root / cfg.get(f"{name}_dir", name)
        if not d.is_dir():
            return None
        files = list_class_folder(d, f"imagefolder {name}")
        extra = sorted(set(files) - set(classes))
        if extra:
            raise DataError(f"{d} has classes not in train/: {extra[:5]}")
        return [(str(p), cidx[c]) for c in sorted(files) for p in files[c]]

    val, test = split_dir("val"), split_dir("test")
    if val is None:
        train, val = stratified_split(train, float(cfg.get("val_fraction", 0.2)), seed, "imagefolder-val")
        info["val"] = f"seeded stratified hold-out of {cfg.get('val_fraction', 0.2)} of train"
    if test is None:
        test = val
        info["test"] = "no test/ folder: test = val"
    return make_bundle(cfg, train, val, test, classes, mean, std, info)


def make_bundle(cfg: dict, train, val, test, classes, mean, std, info: dict):
    size = int(cfg.get("image_size", 224))
    bad = cfg.get("on_bad_image", "skip")
    cache = resize_size(size) if cfg.get("cache") else None
    resize = cfg.get("resize", "crop")
    ttf = train_transform(size, mean, std, cfg.get("crop_scale") or DEFAULT_CROP_SCALE, bool(cfg.get("flip", True)),
                          bool(cfg.get("train_augment", True)), resize)
    etf = eval_transform(size, mean, std, resize)
    sets = {"train": ImageListDataset(train, classes, ttf, True, bad, cache, mean),
            "val": ImageListDataset(val, classes, etf, False, bad, cache, mean),
            "test": ImageListDataset(test, classes, etf, False, bad, cache, mean)}
    info = {"image_size": size, "resize": resize, "train_augment": bool(cfg.get("train_augment", True)), "sizes": {k: len(v) for k, v in sets.items()}, **info}
    return DataBundle(sets["train"], sets["val"], sets["test"], list(classes), tuple(mean), tuple(std), size, info)
