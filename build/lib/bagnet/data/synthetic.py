"""Synthetic probe with known ground truth about what a bag of q x q local features can solve.

Every image is a stationary cluttered background (grey level, pixel noise, short thin strokes in
muted colours; the same distribution for every class) plus the parts that define its class. Each class is
decided by one named cue:

==========  ======  ==================================================================  =================
class       kind    the cue                                                             solvable by
==========  ======  ==================================================================  =================
local_plus  local   4 white 5x5 "+" motifs anywhere                                     any BagNet, CNN
local_x     local   4 white 5x5 "x" motifs anywhere                                     any BagNet, CNN
local_ring  local   4 white 5x5 hollow squares anywhere                                 any BagNet, CNN
mid_rb      mid     3x: a red 4x4 dot 12 px LEFT of a blue 4x4 dot                      BagNet-17/33, CNN
mid_br      mid     3x: the same two dots, blue 12 px left of red                       BagNet-17/33, CNN
global_cw   global  green square, yellow ring, magenta diamond CLOCKWISE on a triangle  CNN only
global_ccw  global  the same three parts, counter-clockwise                             CNN only
==========  ======  ==================================================================  =================

Why these are the answers (not just hopes):

* BagNet-q's logit is a mean over a stride-8 grid of q x q windows, each scored on its own (unit i sees
  pixels 8i .. 8i+q-1; convolutions are unpadded so there is no border cue inside a window). So it depends
  only on the multiset of what its windows see.
* The two classes of a pair hold the same parts; only their arrangement differs. A window that touches two
  parts needs q >= d - p + 2 (d: left-edge distance, p: part size): 10 for the mid dots (BagNet-9 never
  sees both, BagNet-17 sees the whole pair), 37 for the global parts (no BagNet).
* A BagNet could still tell an arrangement indirectly by *localising* each part: near an image border fewer
  windows contain a part, at truncated offsets. So parts go only where the window offsets that see them do
  not depend on the class. The global triangle's corners are (y, x), (y, x + d) and (y + d, x) with d = 40
  (a multiple of 8) and y, x drawn from positions where a part at y and at y + d (x and x + d) meets the
  same window offsets for every q: all three corners look the same to every BagNet window, the same
  image with the other cyclic order gives the same logits, and BagNets are at chance *by construction*
  (tests: :func:`window_offsets`). The mid pair's start is uniform over all 8 phases of the grid interior.
* **Absolute position carries no class information in the global pair.** The colours sit on the corners in
  one of three rotations, drawn uniformly, so every part is equally likely on every corner in both classes:
  only the relative arrangement (which part follows which going clockwise) separates them. A CNN needs two
  parts in one receptive field (the longest side spans d + p = 45 px); the demo's ``small_cnn`` with 5
  stages sees 125 px, the whole image.
* **The 2x2 scrambling grid splits the global arrangement and keeps every other cue whole.** The three
  corners lie in three different tiles of the 2x2 grid, so every tile derangement destroys the triangle,
  while local motifs and mid pairs never straddle a seam of that grid.
* With a 64-px image no such placement exists for q = 33. The smallest size where the global pair is
  BagNet-33-proof and split by the 2x2 grid is 104 px; the default is 112 (= the cpu profile's size).
  Smaller images fall back to the largest q in (17, 9) that can be made blind, with a smaller
  distance; ``info['global_blind_q']`` says which.

Expected result: BagNet-9 ~100% on local, ~50% within the mid pair (it confuses the two mid classes with
each other, but not with others), ~50% within the global pair; BagNet-17/33 ~100% local and mid, ~50%
within the global pair; the CNN solves all three kinds. No flips or crops are applied: a horizontal flip
would swap the pair classes.
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
SPLIT_GRID = 2              # the scrambling grid that splits the global triangle and keeps every other cue whole

_P = {  # part masks (True = part pixel)
    "plus": np.array([[0, 0, 1, 0, 0], [0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 0, 0], [0, 0, 1, 0, 0]], bool),
    "x": np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1],
    "ring": np.pad(np.zeros((3, 3), bool), 1, constant_values=True),
    "dot": np.ones((4, 4), bool),
    "square": np.ones((5, 5), bool),
    "diamond": np.array([[0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0]], bool),
}
WHITE, RED, BLUE = (0.95, 0.95, 0.95), (0.95, 0.15, 0.10), (0.10, 0.30, 0.95)
GREEN, YELLOW, MAGENTA = (0.10, 0.85, 0.20), (0.95, 0.85, 0.10), (0.85, 0.15, 0.85)


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
    SyntheticClass("mid_rb", "mid", (("dot", RED), ("dot", BLUE)), "3x: red dot 12 px left of blue dot", "q>=17"),
    SyntheticClass("mid_br", "mid", (("dot", BLUE), ("dot", RED)), "3x: blue dot 12 px left of red dot", "q>=17"),
    # global: parts in their clockwise order around the triangle (y, x) -> (y, x + d) -> (y + d, x)
    SyntheticClass("global_cw", "global", (("square", GREEN), ("ring", YELLOW), ("diamond", MAGENTA)),
                   "green square -> yellow ring -> magenta diamond clockwise on a triangle (sides 40 px)",
                   "no BagNet (q<=33); full-image CNN"),
    SyntheticClass("global_ccw", "global", (("square", GREEN), ("diamond", MAGENTA), ("ring", YELLOW)),
                   "the same three parts counter-clockwise", "no BagNet (q<=33); full-image CNN"),
)
CLASS_BY_NAME = {c.name: c for c in SYNTHETIC_CLASSES}
MID_DISTANCE = 12
LOCAL_COPIES = 4
MID_COPIES = 3      # stacked vertically >= MID_ROW_GAP apart: no 17-px window sees dots of two copies. Only one
                    # column of 17-px windows sees a copy's order; with 2 copies BagNet-17 missed it on one seed
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


def _one_side(x: int, size: int, seam: int) -> bool:
    """True if pixels [x, x + size) lie on one side of ``seam`` (a 2x2 scrambling tile border)."""
    return x + size <= seam or x >= seam


def _phase_balanced(xs: list[int]) -> tuple[int, ...]:
    """The same number of positions for each of the 8 grid phases (the first ones of each phase)."""
    by_phase: dict[int, list[int]] = {}
    for x in xs:
        by_phase.setdefault(x % GRID_STRIDE, []).append(x)
    if len(by_phase) < GRID_STRIDE:
        return ()
    n = min(len(v) for v in by_phase.values())
    return tuple(sorted(x for v in by_phase.values() for x in v[:n]))


def _rows_that_fit(size: int, p: int, seam: int) -> int:
    """How many mid copies fit, up to MID_COPIES: rows >= MID_ROW_GAP apart, off the seam (greedy from the
    top row finds the most)."""
    rows = []
    for y in range(1, size - p):
        if _one_side(y, p, seam) and (not rows or y - rows[-1] >= MID_ROW_GAP):
            rows.append(y)
    return max(1, min(MID_COPIES, len(rows)))


@dataclass(frozen=True)
class Geometry:
    """Where parts may go for this image size (derived, so any image_size >= 48 works).

    ``global_x``: the triangle's top-left corner (its y and x are each drawn from this set);
    ``mid_x``: the mid pair's left dot; ``seam``: the border of the 2x2 scrambling grid's tiles."""
    size: int
    global_d: int
    global_x: tuple[int, ...]
    global_blind_q: int
    mid_x: tuple[int, ...]
    mid_copies: int = MID_COPIES

    @property
    def seam(self) -> int:
        return self.size // SPLIT_GRID

    @staticmethod
    def for_size(size: int) -> "Geometry":
        p, seam = 5, size // SPLIT_GRID
        for q in sorted(PATCH_SIZES, reverse=True):
            d = math.ceil((q + p - 1) / GRID_STRIDE) * GRID_STRIDE   # no q-window touches two corners
            xs = [x for x in _blind_positions(size, p, d, [qq for qq in PATCH_SIZES if qq <= q])
                  if x + p <= seam <= x + d]                         # corners in different 2x2 tiles
            if xs and d + p <= 61:                                    # small_cnn's receptive field
                break
        else:
            raise ConfigError(f"synthetic image_size={size} is too small for a global pair (use >= 48)")
        dot = _P["dot"].shape[0]
        inner = set(_phase_interior(size, dot, 9))
        starts = _phase_balanced([x for x in range(size) if x in inner and x + MID_DISTANCE in inner
                                  and _one_side(x, MID_DISTANCE + dot, seam)])
        if not starts:
            raise ConfigError(f"synthetic image_size={size} is too small for the mid pair")
        return Geometry(size, d, tuple(xs), q, starts, _rows_that_fit(size, dot, seam))


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
    s, seam = geom.size, geom.seam
    boxes = [] if boxes is None else boxes

    def paint(mask: str, colour, y: int, x: int) -> None:
        _paint(img, mask, colour, y, x, base)
        h, w = _P[mask].shape
        boxes.append((int(y), int(x), int(y) + h, int(x) + w))

    img, base = _background(rng, s, strokes_per_4k)
    if cls.kind == "local":
        (mask, colour), = cls.parts
        occupied: list = []
        while len(occupied) < LOCAL_COPIES:   # anywhere, but never across a seam of the 2x2 grid
            y, x = (int(v) for v in rng.integers(1, s - 6, 2))
            if _one_side(y, 5, seam) and _one_side(x, 5, seam) and _free(occupied, y, x, 5, 5, 4):
                occupied.append((y, x, 5, 5))
                paint(mask, colour, y, x)
    elif cls.kind == "mid":
        p = _P["dot"].shape[0]
        rows: list[int] = []
        tries = 0
        while len(rows) < geom.mid_copies:    # vertical positions: anywhere off the seam, same rule for both classes
            y, tries = int(rng.integers(1, s - p)), tries + 1
            if _one_side(y, p, seam) and all(abs(y - r) >= MID_ROW_GAP for r in rows):
                rows.append(y)
            elif tries % 64 == 0:             # the rows drawn so far leave no room for the rest: start again
                rows = []
        for y in rows:
            x = geom.mid_x[rng.integers(len(geom.mid_x))]   # each copy's x uniform over whole phase cycles
            for k, (mask, colour) in enumerate(cls.parts):
                paint(mask, colour, y, x + k * MID_DISTANCE)
    else:
        d, xs = geom.global_d, geom.global_x
        y, x = xs[rng.integers(len(xs))], xs[rng.integers(len(xs))]
        corners = ((y, x), (y, x + d), (y + d, x))          # clockwise on screen (y points down)
        turn = int(rng.integers(3))                          # which corner the first part takes: uniform,
        for k, (mask, colour) in enumerate(cls.parts):       # so no part's position depends on the class
            paint(mask, colour, *corners[(turn + k) % 3])
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
