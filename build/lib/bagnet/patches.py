"""Most class-predictive image patches over a dataset split (paper Fig. 3-style).

The patches are the model's natural ones: unit (i, j) of ``patch_logits(x)`` (stride 8, no padding)
sees the q x q crop of x at top-left (8i, 8j). For each class c we keep
  * "class": the k patches with the highest logit for c among images labelled c;
  * "distractor": the k patches with the highest logit for c among images of other classes
    (the paper's fingers-on-green-background predicting "tench").
One forward per batch; a running top-k per class keeps memory at O(len(classes) * k) patches.

``evidence``: "logit" ranks by the raw class logit (the authors' routine); "relative" by the logit minus the
patch's mean logit over all classes. A patch's logits are identifiable only up to a constant per patch (it
changes no prediction), so raw logits rank first the patches whose every logit is high: the same
cassette-player patch at the top of both tench's and golf ball's distractors. Relative evidence removes that
constant (:func:`bagnet.heatmaps.classifier`).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .heatmaps import classifier
from .utils import unwrap

__all__ = ["most_predictive_patches"]

_FIELDS = ("logits", "patches", "image_index", "location", "label")


def patch_evidence(net: nn.Module, x: torch.Tensor, evidence: str = "logit") -> torch.Tensor:
    """Per patch and class [B, K, h, w]: the class logit, or (``relative``) it minus the patch's mean logit."""
    w, b = classifier(net, evidence)
    return torch.einsum("bchw,kc->bkhw", net.forward_features(x), w) + b[None, :, None, None]


def _empty(q: int, dtype) -> dict:
    return {"logits": torch.empty(0, dtype=dtype), "patches": torch.empty(0, 3, q, q, dtype=dtype),
            "image_index": torch.empty(0, dtype=torch.long), "location": torch.empty(0, 2, dtype=torch.long),
            "label": torch.empty(0, dtype=torch.long)}


def _merge(best: dict, cand: dict, k: int) -> dict:
    both = {f: torch.cat([best[f], cand[f]]) for f in _FIELDS}
    order = both["logits"].topk(min(k, len(both["logits"]))).indices
    return {f: v[order] for f, v in both.items()}


def _candidates(x, labels, index, scores, mask, k, q, stride=8, max_per_image: int | None = 2) -> dict:
    """Top-k entries of scores [B, h, w] restricted to images where mask [B] holds; crops only those.

    Non-maximum suppression: a window is skipped when a higher one already kept in the same image overlaps
    it (both offsets < q), or when that image already gave ``max_per_image`` windows (None: no cap, no
    suppression, the plain top-k). Images differ between batches, so merging batches keeps both rules."""
    b, h, w = scores.shape
    flat = scores.masked_fill(~mask[:, None, None], float("-inf")).reshape(-1)
    n = int(mask.sum()) * h * w
    pool = flat.topk(min(k if max_per_image is None else 32 * k, n))
    keep, per_image = [], {}
    for value, i in zip(pool.values.tolist(), pool.indices.tolist()):
        if len(keep) == k:
            break
        if max_per_image is not None:
            im, r, c = i // (h * w), (i % (h * w)) // w, i % w
            taken = per_image.setdefault(im, [])
            if len(taken) >= max_per_image or any(abs(r - r2) * stride < q and abs(c - c2) * stride < q
                                                  for r2, c2 in taken):
                continue
            taken.append((r, c))
        keep.append((value, i))
    values = torch.tensor([v for v, _ in keep], dtype=scores.dtype)
    flat_index = torch.tensor([i for _, i in keep], dtype=torch.long, device=scores.device)
    img, pos = flat_index // (h * w), flat_index % (h * w)
    rows, cols = stride * (pos // w), stride * (pos % w)
    patches = torch.stack([x[i, :, r: r + q, c: c + q] for i, r, c in zip(img.tolist(), rows.tolist(),
                                                                            cols.tolist())]) \
        if len(img) else x.new_empty(0, 3, q, q)
    return {"logits": values.cpu(), "patches": patches.cpu(), "image_index": index[img.cpu()],
            "location": torch.stack([rows, cols], 1).cpu(), "label": labels[img].cpu()}


@torch.no_grad()
def most_predictive_patches(model: nn.Module, loader_or_dataset: DataLoader | Dataset | Iterable,
                            classes: Sequence[int], k: int = 8, per_class_images: int | None = None,
                            device: str | torch.device = "cpu", batch_size: int = 32,
                            max_per_image: int | None = 2, evidence: str = "logit") -> dict:
    """Scan a split and return, per class, its most predictive patches and strongest distractors.

    Args:
        model: a BagNet (eval mode is set here); moved to ``device``.
        loader_or_dataset: (image, label) pairs; a Dataset is wrapped in an unshuffled DataLoader.
            Image indices count samples in iteration order, so give an unshuffled loader.
        classes: class ids to report.
        per_class_images: scan at most this many images of each label (None: all).
        max_per_image: at most this many windows from one image, none overlapping another of the same image
            (non-maximum suppression); None: the plain top-k (overlapping neighbours included).
        evidence: "logit" or "relative" (module doc); the entries' "logits" hold that score.

    Returns:
        {c: {"class": d, "distractor": d}} with d = {"logits": [n], "patches": [n, 3, q, q]
        (normalised, as fed to the model), "image_index": [n], "location": [n, 2] top-left
        (row, col) in the image, "label": [n] label of the source image}, sorted by logit, n <= k; and
        "scanned": {"class": images of c scanned, "distractor": images of other classes scanned}.
    """
    net = unwrap(model).to(device).eval()
    q = net.patch_size
    if isinstance(loader_or_dataset, Dataset):
        loader_or_dataset = DataLoader(loader_or_dataset, batch_size=batch_size, shuffle=False)
    classes = [int(c) for c in classes]
    cls_t = torch.tensor(classes, device=device)
    dtype = next(net.parameters()).dtype
    best = {c: {"class": _empty(q, dtype), "distractor": _empty(q, dtype)} for c in classes}
    seen: dict[int, int] = {}
    offset = 0
    for x, labels in loader_or_dataset:
        labels = torch.as_tensor(labels)
        index = torch.arange(offset, offset + len(labels))
        offset += len(labels)
        keep = []
        for i, y in enumerate(labels.tolist()):
            seen[y] = seen.get(y, 0) + 1
            if per_class_images is None or seen[y] <= per_class_images:
                keep.append(i)
        if not keep:
            continue
        if len(keep) < len(labels):
            x, labels, index = x[keep], labels[keep], index[keep]
        x = x.to(device=device, dtype=dtype)
        logits = patch_evidence(net, x, evidence)[:, cls_t]                    # [B, C, h, w]
        labels_d = labels.to(device)
        for j, c in enumerate(classes):
            own = labels_d == c
            for kind, mask in (("class", own), ("distractor", ~own)):
                if mask.any():
                    cand = _candidates(x, labels, index, logits[:, j], mask, k, q, max_per_image=max_per_image)
                    best[c][kind] = _merge(best[c][kind], cand, k)
    scanned = {y: n if per_class_images is None else min(n, per_class_images) for y, n in seen.items()}
    for c in classes:   # images scanned: of the class itself, and of every other class (its distractors)
        best[c]["scanned"] = {"class": scanned.get(c, 0), "distractor": sum(n for y, n in scanned.items() if y != c)}
    return best


@torch.no_grad()
def top_windows(model: nn.Module, image: torch.Tensor, target: int, k: int = 3, evidence: str = "logit") -> dict:
    """The ``k`` highest-scoring q x q windows of one image [3, H, W] for class ``target``, distinct (no two
    overlapping): the same entries as :func:`most_predictive_patches` gives for one image."""
    net = unwrap(model).eval()
    p = next(net.parameters())
    x = image[None].to(p.device, p.dtype)
    scores = patch_evidence(net, x, evidence)[:, target]
    return _candidates(x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), scores,
                       torch.ones(1, dtype=torch.bool, device=x.device), k, net.patch_size, max_per_image=k)
