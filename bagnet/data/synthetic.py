"""Synthetic probe with known ground truth about what a bag of q x q local features can solve.

Every image is a stationary cluttered background (grey level, pixel noise, short thin strokes in
muted colours; the same distribution for every class) plus the parts that define its class:

=============  ======  ================================================================  ==================
class          kind    what is in the image                                              solvable by
=============  ======  ================================================================  ==================
local_plus     local   4 white 5x5 "+" motifs anywhere                                   any BagNet, CNN
local_x        local   4 white 5x5 "x" motifs anywhere                                   any BagNet, CNN
local_ring     local   4 white 5x5 hollow squares anywhere                               any BagNet, CNN
mid_rb         mid     2x: a red 4x4 dot 12 px LEFT of a blue 4x4 dot                    BagNet-17/33, CNN
mid_br         mid     2x: the same two dots, blue 12 px left of red                     BagNet-17/33, CNN
global_gy      global  a green 5x5 square 40 px left of a yellow 5x5 ring                 CNN only
global_yg      global  the same two parts, yellow 40 px left of green                    CNN only
=============  ======  ================================================================  ==================

Why these are the answers (not just hopes):

* BagNet-q's logit is a sum over a stride-8 grid of q x q windows, each scored on its own (unit i sees
  pixels 8i .. 8i+q-1; convolutions are unpadded so there is no border cue inside a window).
* The two classes of a pair hold the same parts; only their left/right order differs. A window that
  touches both parts needs q >= d - p + 2 (d: left-edge distance, p: part size): 10 for the mid dots
  (so BagNet-9 never sees both, BagNet-17 sees the whole pair), 37 for the global parts (no BagNet).
* A BagNet could still tell the order indirectly by *localising* each part: near an image border fewer
  windows contain a part, at truncated offsets, and a sum over windows can learn "green near the left
  edge". So parts are placed only where the multiset of window offsets that see them does not depend
  on the class: both ends of a pair lie in the grid's interior, where the offsets depend only on the
  position mod 8; the global distance is a multiple of 8 and the mid pair's start is uniform over
  all 8 phases. Then the class-conditional distribution of what every window sees is identical for
  the two classes of a pair: BagNets are at chance on it *by construction* (checked in the tests with
  :func:`window_offsets`). A full-image CNN (``small_cnn``, receptive field 61 px, padded) sees both
  parts and also absolute position, and solves it.
* With a 64-px image no such placement exists for q = 33: the 4x4 grid of 33-px windows localises
  every part. The smallest size where the global pair is BagNet-33-proof is 104 px; the default is
  112 (= the cpu profile's size). Smaller images fall back to the largest q in (17, 9) that can be made
  blind, with a larger-than-q distance; ``info['global_blind_q']`` says which.

Expected result: BagNet-9 ~100% on local, ~50% on mid (it confuses the two mid classes with each
other, but not with others), ~50% on global; BagNet-17/33 ~100% local and mid, ~50% global; the CNN
solves all three kinds. No flips or crops are applied: a horizontal flip would swap the pair classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .bundle import DataBundle, DataError
from .transforms import normalize_uint8

PATCH_SIZES = (9, 17, 33)   # the BagNets whose blindness the design targets
GRID_STRIDE = 8             # BagNet feature-map stride

_P = {  # part masks (True = part pixel)
    "plus": np.array([[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]], bool),
    "x": np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1],
    "ring": np.pad(np.zeros((3, 3), bool), 1, constant_values=True),
    "dot": np.ones((4, 4), bool),
    "square": np.ones((5, 5), bool),
}
WHITE, RED, BLUE = (0.95, 0.95, 0.95), (0.95, 0.15, 0.10), (0.10, 0.30, 0.95)
GREEN, YELLOW = (0.10, 0.85, 0.20), (0.95, 0.85, 0.10)


@dataclass(frozen=True)
class SyntheticClass:
    name: str
    kind: str                 # local | mid | global
    parts: tuple              # (mask name, colour) left to right; one entry for local motifs
    description: str
    solvable_by: str

    @property
    def part_multiset(self) -> tuple:
        return tuple(sorted((m, c) for m, c in self.parts))


SYNTHETIC_CLASSES = (
    SyntheticClass("local_plus", "local", (("plus", WHITE),), "4 white '+' motifs (5 px) anywhere", "q>=9"),
    SyntheticClass("local_x", "local", (("x", WHITE),), "4 white 'x' motifs (5 px) anywhere", "q>=9"),
    SyntheticClass("local_ring", "local", (("ring", WHITE),), "4 white hollow squares (5 px) anywhere", "q>=9"),
    SyntheticClass("mid_rb", "mid", (("dot", RED), ("dot", BLUE)), "2x: red dot 12 px left of blue dot", "q>=17"),
    SyntheticClass("mid_br", "mid", (("dot", BLUE), ("dot", RED)), "2x: blue dot 12 px left of red dot", "q>=17"),
    SyntheticClass("global_gy", "global", (("square", GREEN), ("ring", YELLOW)),
                   "green square 40 px left of yellow ring", "no BagNet (q<=33); full-image CNN"),
    SyntheticClass("global_yg", "global", (("ring", YELLOW), ("square", GREEN)),
                   "yellow ring 40 px left of green square", "no BagNet (q<=33); full-image CNN"),
)
CLASS_BY_NAME = {c.name: c for c in SYNTHETIC_CLASSES}
MID_DISTANCE = 12
LOCAL_COPIES = 4
MID_COPIES = 2      # stacked vertically >= MID_ROW_GAP apart: no 17-px window sees dots of two copies
MID_ROW_GAP = 20


def window_offsets(x: int, p: int, size: int, q: int, stride: int = GRID_STRIDE) -> tuple[int, ...]:
    """Offsets x - a of a p-px part at x inside every BagNet-q window [a, a+q-1] that touches it."""
    n = (size - q) // stride + 1
    return tuple(x - a for a in range(0, n * stride, stride) if a <= x + p - 1 and a + q - 1 >= x)


def _blind_positions(size: int, p: int, d: int, qs) -> list[int]:
    """Left ends x of a pair (x, x+d) whose window offsets are identical at both ends for every q in qs.
    With d = 0 mod 8 this makes 'A at x, B at x+d' and 'B at x, A at x+d' look the same to BagNet-q."""
    return [x for x in range(0, size - p - d + 1)
            if all(window_offsets(x, p, size, q) == window_offsets(x + d, p, size, q) for q in qs)]


def _phase_interior(size: int, p: int, q: int) -> list[int]:
    """Positions whose window offsets depend only on x mod 8 (not on the distance to the border)."""
    centre = {}
    for x in range(size // 2 - 4, size // 2 + 4):
        centre[x % GRID_STRIDE] = window_offsets(x, p, size, q)
    return [x for x in range(0, size - p + 1) if window_offsets(x, p, size, q) == centre[x % GRID_STRIDE]]


@dataclass(frozen=True)
class Geometry:
    """Where pair parts may go for this image size (derived, so any image_size >= 48 works)."""
    size: int
    global_d: int
    global_x: tuple[int, ...]
    global_blind_q: int
    mid_x: tuple[int, ...]

    @staticmethod
    def for_size(size: int) -> "Geometry":
        p = 5
        for q in sorted(PATCH_SIZES, reverse=True):
            d = math.ceil((q + p - 1) / GRID_STRIDE) * GRID_STRIDE   # no q-window touches both parts
            xs = _blind_positions(size, p, d, [qq for qq in PATCH_SIZES if qq <= q])
            if xs and d + p <= 61:                                    # small_cnn's receptive field
                break
        else:
            raise ConfigError(f"synthetic image_size={size} is too small for a global pair (use >= 48)")
        inner = set(_phase_interior(size, _P["dot"].shape[0], 9))
        starts = [x for x in range(size) if x in inner and x + MID_DISTANCE in inner]
        starts = starts[: len(starts) // GRID_STRIDE * GRID_STRIDE]  # whole phase cycles: every phase equally often
        if len(starts) < GRID_STRIDE:
            raise ConfigError(f"synthetic image_size={size} is too small for the mid pair")
        return Geometry(size, d, tuple(xs), q, tuple(starts))


def _seed_for(seed: int, split: str) -> np.random.Generator:
    # Independent streams per split, derived from the run seed (SeedSequence mixes all entries).
    return np.random.default_rng([int(seed), {"train": 1, "val": 2, "test": 3}[split], 0x5EED])


def _background(rng: np.random.Generator, s: int, strokes_per_4k: float) -> tuple[np.ndarray, float]:
    base = float(rng.uniform(0.35, 0.55))
    img = np.full((s, s, 3), base, np.float32)
    img += rng.normal(0.0, 0.04, (s, s, 3)).astype(np.float32)
    n = rng.poisson(strokes_per_4k * s * s / 4096)
    dirs = ((0, 1), (1, 0), (1, 1), (1, -1))
    for _ in range(n):
        # Muted colours only: no clutter pixel can pass for a white motif or a saturated part.
        colour = rng.uniform(0.15, 0.7) + rng.uniform(-0.08, 0.08, 3)
        dy, dx = dirs[rng.integers(4)]
        length = rng.integers(2, 7)
        y, x = rng.integers(0, s, 2)
        ys, xs = y + dy * np.arange(length), x + dx * np.arange(length)
        ok = (ys >= 0) & (ys < s) & (xs >= 0) & (xs < s)
        img[ys[ok], xs[ok]] = colour
    return img, base


def _paint(img: np.ndarray, mask_name: str, colour, y: int, x: int, base: float) -> None:
    m = _P[mask_name]
    h, w = m.shape
    # A 1-px halo of flat background keeps clutter from touching (and reshaping) the part.
    y0, x0, y1, x1 = max(y - 1, 0), max(x - 1, 0), min(y + h + 1, img.shape[0]), min(x + w + 1, img.shape[1])
    img[y0:y1, x0:x1] = base
    img[y:y + h, x:x + w][m] = colour


def _free(occupied: list, y: int, x: int, h: int, w: int, gap: int) -> bool:
    return all(y + h + gap <= oy or oy + oh + gap <= y or x + w + gap <= ox or ox + ow + gap <= x
               for oy, ox, oh, ow in occupied)


def render(cls: SyntheticClass, rng: np.random.Generator, geom: Geometry, strokes_per_4k: float,
           boxes: list | None = None) -> np.ndarray:
    """One image of class ``cls`` as float32 HxWx3 in [0, 1]; ``boxes`` (a list) receives each part's
    (y0, x0, y1, x1) (the random draws are the same with or without it)."""
    s = geom.size
    boxes = [] if boxes is None else boxes
    img, base = _background(rng, s, strokes_per_4k)
    if cls.kind == "local":
        (mask, colour), = cls.parts
        occupied: list = []
        while len(occupied) < LOCAL_COPIES:
            y, x = rng.integers(1, s - 6, 2)
            if _free(occupied, y, x, 5, 5, 4):
                occupied.append((y, x, 5, 5))
                _paint(img, mask, colour, y, x, base)
                boxes.append((int(y), int(x), int(y) + 5, int(x) + 5))
    else:
        xs, d = (geom.mid_x, MID_DISTANCE) if cls.kind == "mid" else (geom.global_x, geom.global_d)
        p = _P[cls.parts[0][0]].shape[0]
        copies = MID_COPIES if cls.kind == "mid" else 1
        rows: list[int] = []
        while len(rows) < copies:            # vertical positions: anywhere, same rule for both classes
            y = int(rng.integers(1, s - p))
            if all(abs(y - r) >= MID_ROW_GAP for r in rows):
                rows.append(y)
        for y in rows:
            x = xs[rng.integers(len(xs))]    # each copy's x independent and uniform over whole phase cycles
            for k, (mask, colour) in enumerate(cls.parts):
                _paint(img, mask, colour, y, x + k * d, base)
                boxes.append((int(y), int(x + k * d), int(y) + p, int(x + k * d) + p))
    return np.clip(img, 0.0, 1.0)


class SyntheticDataset(Dataset):
    """Pre-rendered images held as uint8 [N, 3, S, S]; items are normalised float32 tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str], split: str,
                 mean, std, boxes: list | None = None):
        self.images = torch.from_numpy(images)   # shares memory with the numpy array
        self._np = images
        self.labels = labels.astype(np.int64)
        self.classes = classes
        self.samples = [(f"synthetic/{split}/{i:05d}", int(y)) for i, y in enumerate(self.labels)]
        self.targets = [int(y) for y in self.labels]
        self.mean, self.std = mean, std
        self.boxes = boxes

    def parts(self, i: int) -> list:
        """Where image ``i``'s parts are: [(y0, x0, y1, x1), ...] (the additivity experiment occludes them)."""
        return list(self.boxes[i]) if self.boxes is not None else []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return normalize_uint8(self._np[i], self.mean, self.std), int(self.labels[i])


def generate(classes: list[SyntheticClass], per_class: int, geom: Geometry, rng: np.random.Generator,
             strokes_per_4k: float = 12.0, boxes: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced images (uint8 N x 3 x S x S) and labels, classes interleaved; ``boxes`` (a list)
    receives each image's part boxes."""
    n = per_class * len(classes)
    images = np.empty((n, 3, geom.size, geom.size), np.uint8)
    labels = np.tile(np.arange(len(classes)), per_class)
    for i, y in enumerate(labels):
        found: list = []
        img = render(classes[y], rng, geom, strokes_per_4k, found)
        images[i] = np.round(img * 255).astype(np.uint8).transpose(2, 0, 1)
        if boxes is not None:
            boxes.append(found)
    return images, labels


def build_synthetic(cfg, seed: int, mean, std):
    size = int(cfg.get("image_size", 112))
    names = cfg.get("classes") or [c.name for c in SYNTHETIC_CLASSES]
    num = cfg.get("num_classes")
    if num:
        if not 2 <= int(num) <= len(names):
            raise DataError(f"data.num_classes={num}: the synthetic probe has {len(names)} classes "
                            f"({', '.join(names)}); choose 2 to {len(names)}")
        names = list(names)[: int(num)]
    unknown = [n for n in names if n not in CLASS_BY_NAME]
    if unknown:
        raise DataError(f"unknown synthetic classes {unknown}; known: {list(CLASS_BY_NAME)}")
    classes = [CLASS_BY_NAME[n] for n in names]
    geom = Geometry.for_size(size)
    n_train = int(cfg.get("samples_per_class", 200))
    n_val = int(cfg.get("val_per_class") or max(4, n_train // 4))
    n_test = int(cfg.get("test_per_class") or max(4, n_train // 2))
    strokes = float(cfg.get("clutter", 12.0))
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        boxes: list = []
        imgs, labels = generate(classes, n, geom, _seed_for(seed, split), strokes, boxes)
        splits[split] = SyntheticDataset(imgs, labels, names, split, mean, std, boxes)
    info = {
        "name": "synthetic", "seed": seed, "image_size": size,
        "sizes": {k: len(v) for k, v in splits.items()},
        "class_kinds": {c.name: c.kind for c in classes},
        "solvable_by": {c.name: c.solvable_by for c in classes},
        "global_blind_q": geom.global_blind_q, "global_distance": geom.global_d, "mid_distance": MID_DISTANCE,
    }
    return DataBundle(splits["train"], splits["val"], splits["test"], list(names), tuple(mean), tuple(std),
                      size, info)
