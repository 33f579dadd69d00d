"""PatchCleanser (Xiang, Mahloujifar & Mittal, USENIX Security 2022): double masking, a certified patch defence
for any image classifier.

Threat model: as bagnet/certify.py's: one p x p patch, any content, anywhere inside the image.

* **Mask set** (the paper's R-covering set, as ``gen_mask_set`` in inspire-group/PatchCleanser builds it from
  ``num_mask``): per axis of n pixels, k masks with stride s = ceil((n - p + 1) / k) and width
  m = min(p + s - 1, n), at 0, s, 2s, ... and a last one flush with the edge (n - m) when the stride does not land
  there. Every patch position y in [0, n - p] lies inside one mask: a multiple of s in [y - s + 1, y] when
  y <= n - m, else the flush one. Masked pixels are set to 0 in the model's input space (the normalised
  dataset mean), as the reference does.
* **Prediction** (double masking): the one-mask predictions; unanimous -> that label. Otherwise every mask
  whose label differs from the majority (most votes; ties to the lowest label, as argmax) is a disagreer, in
  mask order; the first disagreer whose two-mask predictions with every mask all keep its label wins; if none
  does, the majority.
* **Certificate**: every two-mask prediction (a mask with itself included) on the clean image is the label.
  Proof: let mask M* cover the patch. Every two-mask image that involves M* hides the patch, so it is the
  clean one and predicts the label y. First round: M* votes y. If the majority is y, every disagreer (label
  d != y) has a two-mask prediction with M* of y != d, so none wins: y. If the majority is not y, M* is a
  disagreer and all its two-mask predictions are y; any disagreer before it with d != y fails at M*: y.
  A mask covering the whole image certifies nothing (the defended model would be constant).

Cost: the certificate needs the two-mask prediction of every unordered pair of masks, K (K + 1) / 2 forwards
for K = k x k masks (666 at the paper's k = 6); the prediction comes from the same map. :func:`answer_maps`
computes only the part of the map that decides both (the first round, the disagreers' rows, the pairs of a
unanimous correct image up to its first wrong one): the same answers for fewer forwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


def axis_masks(n: int, patch_px: int, k: int) -> tuple[int, int, tuple[int, ...]]:
    """(mask width, stride, mask starts) along one axis of n pixels for a patch of ``patch_px`` and k masks."""
    if not 1 <= patch_px <= n or k < 1:
        raise ValueError(f"patch {patch_px} px on an axis of {n} px with {k} masks per axis")
    stride = math.ceil((n - patch_px + 1) / k)
    width = min(patch_px + stride - 1, n)
    starts = list(range(0, n - width + 1, stride))
    if (n - width) % stride:
        starts.append(n - width)
    return width, stride, tuple(starts)


@dataclass(frozen=True)
class MaskSet:
    image: tuple[int, int]                 # (H, W) pixels
    patch_px: int
    size: tuple[int, int]                  # mask (height, width)
    stride: tuple[int, int]
    rows: tuple[int, ...]                  # top row of each row of masks
    cols: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def covers_image(self) -> bool:
        return self.size == self.image

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every unordered pair of masks, a mask with itself included: the forwards of one certificate."""
        return [(i, j) for i in range(len(self)) for j in range(i, len(self))]

    def boxes(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]

    def masks(self) -> torch.Tensor:
        """[K, H, W] bool, True where the mask hides the image."""
        out = torch.zeros(len(self), *self.image, dtype=torch.bool)
        for k, (r, c) in enumerate(self.boxes()):
            out[k, r:r + self.size[0], c:c + self.size[1]] = True
        return out

    def covering(self, y: int, x: int) -> list[int]:
        """The masks that hide a patch with top-left pixel (y, x) entirely."""
        p, (mh, mw) = self.patch_px, self.size
        return [k for k, (r, c) in enumerate(self.boxes()) if r <= y and y + p <= r + mh and c <= x and x + p <= c + mw]


def mask_set(image_hw: tuple[int, int], patch_px: int, masks_per_axis: int = 6) -> MaskSet:
    """The paper's mask set for a ``patch_px`` square patch on an image of (H, W) pixels, k masks per axis."""
    (mh, sh, rows), (mw, sw, cols) = (axis_masks(n, patch_px, masks_per_axis) for n in image_hw)
    return MaskSet(tuple(image_hw), patch_px, (mh, mw), (sh, sw), rows, cols)


@torch.no_grad()
def prediction_maps(model: nn.Module, images: torch.Tensor, masks: MaskSet, batch_size: int = 256) -> torch.Tensor:
    """Two-mask predictions [B, K, K] (symmetric) of ``model`` on images [B, C, H, W], masked pixels set to 0;
    one forward per image and unordered pair of masks."""
    hide = masks.masks().to(images.device)
    pairs = masks.pairs
    B, K = len(images), len(masks)
    out = torch.empty(B, K, K, dtype=torch.long)
    per_chunk = max(1, batch_size // max(1, B))
    for start in range(0, len(pairs), per_chunk):
        chunk = pairs[start:start + per_chunk]
        hidden = torch.stack([hide[i] | hide[j] for i, j in chunk])                      # [P, H, W]
        batch = torch.where(hidden[None, :, None], 0.0, images[:, None])                  # [B, P, C, H, W]
        pred = model(batch.flatten(0, 1)).argmax(-1).view(B, len(chunk)).cpu()
        for n, (i, j) in enumerate(chunk):
            out[:, i, j] = out[:, j, i] = pred[:, n]
    return out


UNKNOWN = -1      # an entry of a two-mask map that :func:`answer_maps` did not need


def _masked_predictions(model: nn.Module, images: torch.Tensor, hide: torch.Tensor, jobs: list[tuple[int, int, int]],
                        batch_size: int) -> list[int]:
    """The predictions of ``model`` on image b with masks i and j hidden, for each job (b, i, j)."""
    out = []
    for start in range(0, len(jobs), batch_size):
        b, i, j = (torch.tensor(v) for v in zip(*jobs[start:start + batch_size]))
        hidden = (hide[i] | hide[j])[:, None]                                           # [N, 1, H, W]
        out += model(torch.where(hidden, 0.0, images[b])).argmax(-1).tolist()
    return out


@torch.no_grad()
def answer_maps(model: nn.Module, images: torch.Tensor, labels: list[int], masks: MaskSet,
                batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Two-mask maps [B, K, K] holding every entry that :func:`double_masking` and :func:`certify` read, and
    the forwards spent. Both give the answers of the full map (:func:`prediction_maps`): the prediction reads
    the first round and the rows of its disagreers; the certificate is False once one entry is not the label
    (a first round that is not unanimous on the label has one), so only a unanimous correct image needs its
    pairs, and only up to the first wrong one. Entries not needed are ``UNKNOWN``."""
    hide = masks.masks().to(images.device)
    B, K = len(images), len(masks)
    out = torch.full((B, K, K), UNKNOWN, dtype=torch.long)
    forwards = 0

    def fill(jobs):
        nonlocal forwards
        for (b, i, j), pred in zip(jobs, _masked_predictions(model, images, hide, jobs, batch_size)):
            out[b, i, j] = out[b, j, i] = pred
        forwards += len(jobs)

    fill([(b, k, k) for b in range(B) for k in range(K)])                                 # first round
    chase, rows = [], []
    for b in range(B):
        first = out[b].diagonal()
        if bool((first == labels[b]).all()):
            chase.append(b)
        elif len(first.unique()) > 1:                                                     # the disagreers' rows
            labels_b, counts = first.unique(return_counts=True)
            majority = labels_b[counts.argmax()]
            rows += [(b, k, j) for k in (first != majority).nonzero().flatten().tolist() for j in range(K) if j != k]
    fill(sorted(set((b, min(i, j), max(i, j)) for b, i, j in rows)))
    pairs, start = [(i, j) for i, j in masks.pairs if i != j], 0
    while chase and start < len(pairs):                                                   # unanimous and correct
        step = max(1, batch_size // len(chase))
        fill([(b, i, j) for b in chase for i, j in pairs[start:start + step]])
        start += step
        chase = [b for b in chase if bool(((out[b] == labels[b]) | (out[b] == UNKNOWN)).all())]
    return out, forwards


def double_masking(pred_map: torch.Tensor) -> int:
    """PatchCleanser's prediction from one image's two-mask predictions [K, K]."""
    first = pred_map.diagonal()
    labels, counts = first.unique(return_counts=True)                 # labels ascending
    if len(labels) == 1:
        return int(labels[0])
    majority = int(labels[counts.argmax()])                           # first maximum: the lowest label
    for k in (first != majority).nonzero().flatten().tolist():
        if bool((pred_map[k] == first[k]).all()):
            return int(first[k])
    return majority


def certify(pred_map: torch.Tensor, label: int, masks: MaskSet) -> bool:
    """Whether double masking predicts ``label`` whatever one patch holds: every two-mask prediction is it."""
    return not masks.covers_image and bool((pred_map == label).all())
