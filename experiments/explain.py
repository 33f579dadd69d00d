"""Heatmaps and most predictive patches: the registered experiments ``heatmaps`` and ``patches``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import Subset

from bagnet import io
from bagnet.data.folder import IMAGE_EXTENSIONS, load_rgb
from bagnet.data.names import display_names
from bagnet.data.transforms import ToNormalizedTensor
from bagnet.errors import ConfigError
from bagnet.heatmaps import EVIDENCE, heatmap
from bagnet.models import is_bagnet
from bagnet.patches import most_predictive_patches, top_windows
from bagnet.result import Result
from bagnet.utils import unwrap
from bagnet.viz import compare_bagnets_figure, explain_image_figure, patches_figure

from .inputs import class_indices, dataset_labels, eval_indices, load_batch
from .keys import ExperimentConfig, IMAGE, ranged, typed_cfg
from .registry import Experiment, register


def _bagnets(models: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    out = {k: m for k, m in models.items() if is_bagnet(m)}
    if not out:
        raise ConfigError(f"heatmaps and patches need a BagNet; got {', '.join(models)}")
    return out


def heatmaps_result(models: Mapping[str, nn.Module], dataset, classes: Sequence[str], mean, std, *,
                    num_images: int | None, seed: int, device, stride: int, evidence: str,
                    of_classes: Sequence[int] | None = None, per_class: int | None = None) -> Result:
    """Exact heatmaps of the true class for ``num_images`` seeded test images (``of_classes``: of these classes
    only), BagNets side by side; with ``per_class``, that many seeded images of each class instead, a figure per
    class (the keys and their defaults: :class:`HeatmapsConfig`)."""
    bagnets = _bagnets(models)
    labels_all = dataset_labels(dataset) if of_classes is not None or per_class else None
    if per_class:
        wanted = list(of_classes) if of_classes is not None else sorted(set(labels_all))
        groups = {f"heatmaps_{c:03d}_{io.safe_name(classes[c])}": [i for i, y in enumerate(labels_all) if y == c]
                  for c in wanted}
        picks = {name: [pool[i] for i in eval_indices(len(pool), per_class, seed)] for name, pool in groups.items()}
    else:
        pool = list(range(len(dataset))) if of_classes is None else [
            i for i, y in enumerate(labels_all) if y in set(of_classes)]
        picks = {"heatmaps": [pool[i] for i in eval_indices(len(pool), num_images, seed)]}
    rows, figures = [], {}
    for fig_name, idx in picks.items():
        fig_rows, figures[fig_name] = _explained(bagnets, dataset, idx, classes, mean, std, device, stride, evidence)
        rows += fig_rows
    indices = [i for idx in picks.values() for i in idx]
    return Result(tables={"heatmaps": pd.DataFrame(rows)}, figures=figures,
                  raw={"indices": indices, "stride": stride, "evidence": evidence},
                  summary=f"{len(indices)} images x {len(bagnets)} BagNets")


def _explained(bagnets: Mapping[str, nn.Module], dataset, idx: list[int], classes, mean, std, device, stride: int,
               evidence: str) -> tuple[list[dict], Any]:
    """The rows and the figure of the images ``idx``: each BagNet's heatmap of the true class, titled with the true
    class and, when the largest-q BagNet gets it wrong, its prediction."""
    names = display_names(classes)
    images, labels = load_batch(dataset, idx)
    maps, rows = {}, []
    with torch.inference_mode():
        for name, model in bagnets.items():
            model = model.to(device).eval()
            h = heatmap(model, images.to(device), target=labels.to(device), stride=stride,
                        evidence=evidence).float().cpu()
            maps[name] = h
            logits = model(images.to(device)).float().cpu()
            for k, i in enumerate(idx):
                pred = int(logits[k].argmax())
                rows.append({"model": name, "index": i, "label": classes[labels[k]], "label_name": names[labels[k]],
                             "pred": classes[pred], "pred_name": names[pred], "true_logit": float(logits[k, labels[k]]),
                             "heat_min": float(h[k].min()), "heat_max": float(h[k].max()),
                             "heat_mean": float(h[k].mean())})
    last = rows[-len(idx):]          # the largest-q BagNet's predictions, for the titles
    titles = [f"{names[int(y)]}" + ("" if r["pred_name"] == names[int(y)] else f" (predicted: {r['pred_name']})")
              for y, r in zip(labels, last)]
    return rows, compare_bagnets_figure(images, maps, titles, mean, std)


def patches_result(models: Mapping[str, nn.Module], dataset, classes: Sequence[str], mean, std, *,
                   k: int, per_class_images: int | None, device, max_per_image: int, evidence: str,
                   class_ids: Sequence[int] | None = None, distractor_images: int | None = None,
                   seed: int = 0) -> Result:
    """Per class (``class_ids``: these only): the k most predictive patches among its images and the k strongest
    distractors: distinct windows (no two overlapping in one image), at most ``max_per_image`` from one image (the
    keys and their defaults: :class:`PatchesConfig`). With ``class_ids``, distractors are searched among
    ``distractor_images`` seeded images of the other classes (None: all of them)."""
    name, model = max(_bagnets(models).items(), key=lambda kv: unwrap(kv[1]).patch_size)   # the largest q
    scanned = list(range(len(dataset)))
    if class_ids is not None:
        labels, wanted = dataset_labels(dataset), set(class_ids)
        own = [i for c in class_ids for i in [j for j, y in enumerate(labels) if y == c][:per_class_images]]
        others = [i for i, y in enumerate(labels) if y not in wanted]
        others = [others[j] for j in eval_indices(len(others), distractor_images, seed)]
        scanned, per_class_images = sorted(own + others), None
    class_ids = list(range(len(classes))) if class_ids is None else list(class_ids)
    with torch.inference_mode():
        found = most_predictive_patches(model, Subset(dataset, scanned), class_ids, k=k,
                                        per_class_images=per_class_images, device=device,
                                        max_per_image=max_per_image, evidence=evidence)
    for c in class_ids:     # positions in the scanned subset -> the split's image indices
        for kind in ("class", "distractor"):
            found[c][kind]["image_index"] = torch.tensor([scanned[int(i)] for i in found[c][kind]["image_index"]],
                                                         dtype=torch.long)
    rows, figures, names = [], {}, display_names(classes)
    for c in class_ids:
        for kind in ("class", "distractor"):
            d = found[c][kind]
            for r in range(len(d["logits"])):
                source = int(d["label"][r])
                rows.append({"class": classes[c], "class_name": names[c], "kind": kind, "rank": r + 1,
                             "score": float(d["logits"][r]), "image_index": int(d["image_index"][r]),
                             "source_label": classes[source], "source_name": names[source],
                             "row": int(d["location"][r][0]), "col": int(d["location"][r][1]),
                             "images_scanned": found[c]["scanned"][kind]})
        fig = patches_figure(found[c], names[c], names, mean, std)
        fig.suptitle(f"{name}: {EVIDENCE_SHOWN[evidence]} for '{names[c]}' ({found[c]['scanned']['class']} images of the class and "
                     f"{found[c]['scanned']['distractor']} of others scanned; <= {max_per_image} per image, "
                     "no overlaps)", fontsize=7)
        fig.subplots_adjust(top=0.84)    # the title above the rows' own titles, not on them
        figures[f"patches_{c:03d}_{io.safe_name(classes[c])}"] = fig     # the index: names that cannot collide
    return Result(tables={"patches": pd.DataFrame(rows)}, figures=figures,
                  raw={"model": name, "k": k, "max_per_image": max_per_image, "evidence": evidence,
                       "images_scanned": {classes[c]: found[c]["scanned"] for c in class_ids}},
                  summary=f"{name}: top-{k} patches and distractors for {len(class_ids)} classes")


EVIDENCE_SHOWN = {"logit": "logit", "relative": "logit minus the patch's mean logit"}


@dataclass
class HeatmapsConfig(ExperimentConfig):
    num_images: Optional[int] = ranged(16, ge=1)   # seeded images of the split, explained by every BagNet side by side
    images: Any = None                # your own image files instead: a file, a folder or a list (any size)
    stride: int = ranged(1, ge=1, le=IMAGE)   # one heatmap value every ``stride`` pixels (1: exact at every pixel)
    # relative: the class logit minus the patch's mean logit (README says why); logit
    evidence: str = ranged("relative", choices=EVIDENCE)
    classes: Optional[list[str]] = None   # images of these classes only (ids or names); None: of every class
    # this many seeded images of each class instead of num_images over the split: a figure per class
    per_class: Optional[int] = ranged(None, ge=1)


def check_classes(cfg: Mapping, classes, name: str) -> None:
    """A misspelt class in ``experiments.<name>.classes`` is refused before anything trains, not after."""
    if cfg.get("classes") and classes:
        class_indices(cfg["classes"], classes, f"experiments.{name}.classes")


def check_heatmaps(cfg: Mapping, classes, image_size: int | None) -> None:
    """``classes`` are classes of the data; ``images``, when given, names image files that open (each one's header is
    read: a file that is no image, or one too large to decode, is refused here, before any model is loaded)."""
    check_classes(cfg, classes, "heatmaps")
    if cfg["images"] is None:
        return
    for path in image_files(cfg["images"]):
        try:
            with Image.open(path):   # the header: not an image, or beyond PIL's decompression-bomb limit, fails
                pass
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ConfigError(f"experiments.heatmaps.images: {path} cannot be read as an image "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None


def run_heatmaps(models: Mapping[str, nn.Module], data, cfg: Mapping) -> Result:
    """Exact heatmaps of the BagNets among ``models`` on ``num_images`` images of the split, or, with
    ``images=<file, folder or list>``, on those image files (a figure each)."""
    c = typed_cfg(HeatmapsConfig, cfg, "experiments.heatmaps")
    if c["images"] is not None:
        images = c["images"] if isinstance(c["images"], (str, Path)) else list(c["images"])
        return images_result(models, image_files(images), data.classes, data.mean, data.std,
                             int(data.image_size), c["device"], evidence=c["evidence"])
    of_classes = class_indices(c["classes"], data.classes, "experiments.heatmaps.classes") if c["classes"] else None
    return heatmaps_result(models, data.dataset, data.classes, data.mean, data.std, num_images=c["num_images"],
                           seed=c["seed"], device=c["device"], stride=c["stride"], evidence=c["evidence"],
                           of_classes=of_classes, per_class=c["per_class"])


@dataclass
class PatchesConfig(ExperimentConfig):
    k: int = ranged(8, ge=1)                   # patches shown per class (and distractors)
    # images of each class scanned (None: all; the dense heatmap is cheap)
    per_class_images: Optional[int] = ranged(64, ge=1)
    max_per_image: int = ranged(2, ge=1)       # at most this many of one image's windows in a class's top k
    # rank by the logit minus the patch's mean logit; or logit (raw)
    evidence: str = ranged("relative", choices=EVIDENCE)
    classes: Optional[list[str]] = None   # these classes only (ids or names; the paper: 5 fixed classes); None: every class
    # with classes: distractors among this many seeded images of the other classes (None: all of them)
    distractor_images: Optional[int] = ranged(None, ge=1)


def run_patches(models: Mapping[str, nn.Module], data, cfg: Mapping) -> Result:
    """Per class, the most predictive patches of the largest-q BagNet among ``per_class_images`` images of it."""
    c = typed_cfg(PatchesConfig, cfg, "experiments.patches")
    ids = class_indices(c["classes"], data.classes, "experiments.patches.classes") if c["classes"] else None
    return patches_result(models, data.dataset, data.classes, data.mean, data.std, k=c["k"],
                          per_class_images=c["per_class_images"], device=c["device"],
                          max_per_image=c["max_per_image"], evidence=c["evidence"], class_ids=ids,
                          distractor_images=c["distractor_images"], seed=c["seed"])


# a user's own image files may change under the same names: their heatmaps are computed every time, never reused
register(Experiment("heatmaps", HeatmapsConfig, run_heatmaps, summary="exact BagNet heatmaps of the true class",
                    stored=lambda cfg: cfg.get("images") is None, check=check_heatmaps))
register(Experiment("patches", PatchesConfig, run_patches, summary="per class, the most predictive patches",
                    check=lambda cfg, classes, image_size: check_classes(cfg, classes, "patches")))


# ---------------------------------------------------------------- a user's own image files
def image_files(images) -> list[Path]:
    """``images``: a file, a folder (its image files, recursively, sorted) or a list of either."""
    items = [images] if isinstance(images, (str, Path)) else list(images)
    if not items or any(not str(item).strip() for item in items):
        raise ConfigError(f"experiments.heatmaps.images: {images!r} names no file; give an image file, a folder or a "
                          "list of them (null: the split's images)")
    files = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise ConfigError(f"experiments.heatmaps.images: {item} is neither an image file nor a folder")
    if not files:
        raise ConfigError(f"experiments.heatmaps.images: no image files in {', '.join(map(str, items))}")
    return files


# The longer side of an explained image is at most this many times data.image_size: a 4 x 2000 px strip, its short
# side resized to 64 px, would be 64 x 32000 px (gigabytes at the peak of its heatmaps).
MAX_ASPECT = 4


def explained_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) at which a ``width`` x ``height`` image is explained: its short side ``size``, aspect kept,
    unless the long side would then exceed ``MAX_ASPECT * size``: then the long side is that (the short side less)."""
    scale = min(size / min(width, height), MAX_ASPECT * size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_image(path: Path, size: int, mean, std) -> torch.Tensor:
    """The file as the model sees it: RGB, resized to :func:`explained_size` (aspect kept, no crop), normalised.
    A file that cannot be decoded (not an image, truncated, too large for PIL's decompression-bomb limit) is a
    ConfigError naming it."""
    try:
        img = load_rgb(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f"experiments.heatmaps.images: {path} cannot be read as an image "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    img = img.resize(explained_size(img.width, img.height, size), Image.BILINEAR)
    return ToNormalizedTensor(mean, std)(img)


def images_result(models: Mapping[str, nn.Module], files: Sequence[Path], classes: Sequence[str], mean, std,
                  size: int, device="cpu", k: int = 3, evidence: str = "logit") -> Result:
    """Each image file explained by each BagNet: its prediction, the heatmaps of the predicted class and (when
    the file's folder names a class) of the true class, and its top patches for the predicted class."""
    names = display_names(classes)
    by_folder = {c.lower(): i for i, c in enumerate(classes)} | {n.lower(): i for i, n in enumerate(names)}
    rows, figures = [], {}
    for name, model in _bagnets(models).items():
        model = model.to(device).eval()
        for i, path in enumerate(files):
            x = load_image(path, size, mean, std)
            if min(x.shape[1:]) < model.patch_size:
                raise ConfigError(f"{path}: {tuple(x.shape[1:])} px is smaller than {name}'s {model.patch_size} px "
                                  "patches")
            with torch.inference_mode():
                logits = model(x[None].to(device)).float().cpu()[0]
            pred, true = int(logits.argmax()), by_folder.get(path.parent.name.lower())
            targets = {f"predicted: {names[pred]}": pred}
            if true is not None and true != pred:
                targets[f"true: {names[true]}"] = true
            with torch.inference_mode():
                maps = {t: heatmap(model, x[None].to(device), target=c, evidence=evidence).float().cpu()[0]
                        for t, c in targets.items()}
            top = top_windows(model, x.to(device), pred, k, evidence)
            rows.append({"model": name, "file": str(path), "height": x.shape[1], "width": x.shape[2],
                         "pred": classes[pred], "pred_name": names[pred], "pred_logit": float(logits[pred]),
                         "true": classes[true] if true is not None else None,
                         "true_name": names[true] if true is not None else None,
                         "top_patch_logits": [round(float(v), 4) for v in top["logits"]]})
            verdict = "" if true is None else (" (correct)" if true == pred else f" (true: {names[true]})")
            title = f"{name} on {path.name}: predicts {names[pred]}{verdict}"
            figures[f"explain_{name}_{i:03d}_{io.safe_name(path.name)}"] = explain_image_figure(x, maps, top["patches"],
                                                                          top["logits"].tolist(), title, mean, std)
    return Result(tables={"images": pd.DataFrame(rows)}, figures=figures,
                  raw={"files": [str(f) for f in files], "evidence": evidence},
                  summary=f"{len(files)} image file(s) x {len(_bagnets(models))} BagNet(s)")
