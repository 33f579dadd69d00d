"""Helpers shared by the experiments: typed configs, data access, batched forwards."""
from __future__ import annotations

import copy
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # experiments build Figure objects only; never open a window

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Subset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from bagnet.config import as_dict, validated  # noqa: E402
from bagnet.errors import ConfigError  # noqa: E402
from bagnet.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from bagnet.seeding import generator  # noqa: E402
from bagnet.tasks import finished_summary, fit_run  # noqa: E402
from bagnet.estimate import estimate_train_seconds  # noqa: E402

# ---------------------------------------------------------------- the keys of an experiment, and their ranges
IMAGE = "image"     # a bound that is the side of the images the models see (data.image_size), known with the data


@dataclass(frozen=True)
class Range:
    """The values a key of an experiment may take; a list's every element is held to it. Bounds are numbers or
    :data:`IMAGE`; ``choices``: the only values of a word; ``nonempty``: a list that must hold something.
    None (for an ``Optional`` key) always passes: its meaning is stated beside the key."""
    ge: float | str | None = None
    gt: float | str | None = None
    le: float | str | None = None
    lt: float | str | None = None
    choices: tuple | None = None
    nonempty: bool = False

    def bounds(self, image_size: int | None) -> list[tuple[str, float, str]]:
        """(operator, bound, how it is shown) of every bound that is known (IMAGE only with ``image_size``)."""
        out = []
        for op in ("ge", "gt", "le", "lt"):
            b = getattr(self, op)
            if b == IMAGE:
                if image_size is not None:
                    out.append((op, image_size, f"{image_size} (the image side, data.image_size)"))
            elif b is not None:
                out.append((op, b, f"{b:g}" if isinstance(b, float) else str(b)))
        return out


_OPS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<")}


def ranged(default=MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None, nonempty: bool = False):
    """A key of an experiment's ``Config`` with its default and its range, e.g. ``region: Optional[int] =
    ranged(None, ge=1, le=IMAGE)``: the one home of both (:func:`check_keys` refuses a value outside it)."""
    rule = Range(ge, gt, le, lt, tuple(choices) if choices is not None else None, nonempty)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"range": rule})
    return field(default=default, metadata={"range": rule})


def check_keys(schema: type, cfg: Mapping, where: str, image_size: int | None = None) -> None:
    """Refuse a value of ``cfg`` outside its key's :class:`Range` (declared in ``schema`` with :func:`ranged`): a
    ConfigError naming ``where``.key as the user types it. Bounds on the image side are checked when
    ``image_size`` is given (once the data are known, before any model is loaded). Keys that are dataclasses of
    their own (the paper's ``paper.sensitivity``, ...) are checked key by key."""
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        if is_dataclass(hints[f.name]) and isinstance(cfg.get(f.name), Mapping):
            check_keys(hints[f.name], cfg[f.name], f"{where}.{f.name}", image_size)
            continue
        rule = f.metadata.get("range")
        if rule is None or f.name not in cfg or cfg[f.name] is None:
            continue
        value, name = cfg[f.name], f"{where}.{f.name}"
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if rule.nonempty and not values:
            raise ConfigError(f"{name}: must not be empty" + (f"; valid: {', '.join(rule.choices)}"
                                                              if rule.choices else ""))
        for v in values:
            if rule.choices is not None and v not in rule.choices:
                raise ConfigError(f"{name}: '{v}' is not one of {', '.join(map(str, rule.choices))}")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            for op, bound, _ in rule.bounds(image_size):
                if (isinstance(v, float) and not math.isfinite(v)) or not _OPS[op][0](v, bound):
                    allowed = " and ".join(f"{_OPS[o][1]} {s}" for o, _, s in rule.bounds(image_size))
                    got = f"{v!r} in {value!r}" if isinstance(value, (list, tuple)) else repr(v)
                    raise ConfigError(f"{name}: must be {allowed}, got {got}")


@dataclass
class ExperimentConfig:
    """Keys every experiment understands; each experiment's ``Config`` extends it. The signatures
    config group (configs/signatures/default.yaml) holds the values; this is their schema. Every key has a
    range (:func:`ranged`), checked before any work (``experiments.registry.check``) and again by :func:`typed_cfg`."""
    seed: int = ranged(0, ge=0, lt=2 ** 63)
    device: str = "cpu"
    batch_size: int = ranged(64, ge=1)
    # evaluation images: the first ``num_images`` of a seeded permutation (None = all)
    num_images: Optional[int] = ranged(256, ge=1)
    # None: the model's own dtype; "float64" runs on a float64 copy (exactness checks)
    dtype: Optional[str] = ranged(None, choices=("float32", "float64"))
    progress: bool = True


def typed_cfg(schema: type, cfg: Mapping | None, where: str) -> dict:
    """``cfg`` over the dataclass ``schema``'s defaults as a dict; unknown keys, wrong types and values outside
    a key's range (:func:`check_keys`, without the bounds on the image side) are a ConfigError naming
    ``where``.key."""
    out = asdict(validated(schema, cfg, where))
    check_keys(schema, out, where)
    return out


@dataclass
class SplitData:
    """What an experiment runs on: one split's images with the data's class names and normalisation."""
    dataset: Dataset
    classes: list
    mean: tuple
    std: tuple
    image_size: int | None = None    # the size the models see (images of other sizes are resized to it)


def resolve_data(data, classes=None, mean=None, std=None, split: str = "test"):
    """(dataset, classes, mean, std) of what an experiment was given: a :class:`SplitData` (what the suite
    passes), a :class:`~bagnet.data.DataBundle` (its ``split``), or a bare Dataset or list of (image, label)
    (its ``classes`` attribute, if any). Arguments that are given win; missing mean/std are ImageNet's (for display only)."""
    from bagnet.data.bundle import DataBundle
    if isinstance(data, SplitData):
        classes, mean, std, data = (classes if classes is not None else data.classes, mean or data.mean,
                                    std or data.std, data.dataset)
    elif isinstance(data, DataBundle):
        classes, mean, std, data = (classes if classes is not None else data.classes, mean or data.mean,
                                    std or data.std, data.split(split))
    elif not isinstance(data, (Dataset, Sequence)):
        raise TypeError(f"an experiment runs on a SplitData, a DataBundle, a Dataset or a sequence of (image, label), "
                        f"not {type(data).__name__}")
    if classes is None:
        classes = getattr(data, "classes", None)
    return data, classes, tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)


def eval_indices(n_total: int, num: int | None, seed: int) -> list[int]:
    """Sorted seeded subset of ``num`` dataset indices (all when num is None or >= n_total)."""
    if num is None or num >= n_total:
        return list(range(n_total))
    perm = torch.randperm(n_total, generator=generator(seed, 7))[:num]
    return sorted(perm.tolist())


def _collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.stack([torch.as_tensor(x) for x, _ in items]),
            torch.as_tensor([int(y) for _, y in items], dtype=torch.long))


def loader(dataset, indices, batch_size: int) -> DataLoader:
    """The images ``indices`` of ``dataset`` in order, as torch's DataLoader gives them (the library's path)."""
    return DataLoader(Subset(dataset, [int(i) for i in indices]), batch_size=max(1, batch_size), shuffle=False,
                      num_workers=0, collate_fn=_collate)


def load_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The images ``indices`` as one batch (images [B, C, H, W], labels [B])."""
    if not len(indices):
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return next(iter(loader(dataset, indices, len(indices))))


def iter_batches(dataset, indices, batch_size: int, progress: bool = True, desc: str = "") \
        -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(indices, images, labels) in chunks of ``batch_size``, with a tqdm bar."""
    indices = [int(i) for i in indices]
    batches = loader(dataset, indices, batch_size)
    for k, (images, labels) in enumerate(tqdm(batches, desc=desc, leave=False, disable=not progress,
                                              dynamic_ncols=True)):
        yield indices[k * batch_size: (k + 1) * batch_size], images, labels


def prepare_model(model: nn.Module, device, dtype=None) -> nn.Module:
    """Eval mode on ``device``; with ``dtype`` a converted copy, so the caller's model is never altered."""
    if dtype is not None:
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if next(model.parameters()).dtype != dtype:
            model = copy.deepcopy(model).to(dtype)
    return model.to(device).eval()


@torch.no_grad()
def forward(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``images`` (moved to the model's device/dtype) in batches; returned on the CPU."""
    p = next(model.parameters())
    out = [model(images[i: i + batch_size].to(p.device, p.dtype)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Bool [B]: label among the top-k logits (k capped at the number of classes)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(1)


OCCLUDERS = ("zero", "gray", "dataset_mean", "blur")


def occluder_fill(image: torch.Tensor, kind: str, mean, std, blur_sigma: float = 4.0,
                  dataset_mean: torch.Tensor | None = None) -> torch.Tensor:
    """What occluded pixels become ([C, H, W] or [B, C, H, W]), in normalised space.

    zero: the normalisation mean colour (the paper's choice; for ImageNet statistics a tinted gray);
    gray: RGB (0.5, 0.5, 0.5); dataset_mean: ``dataset_mean`` ([C], normalised), the mean colour of the
    evaluated images (neutral for grayscale data such as 15-Scene); blur: a Gaussian blur of the image."""
    shape = (-1, 1, 1)
    if kind == "zero":
        return torch.zeros_like(image)
    if kind == "gray":
        m = torch.as_tensor(mean, dtype=image.dtype).view(shape)
        s = torch.as_tensor(std, dtype=image.dtype).view(shape)
        return ((0.5 - m) / s).expand_as(image).clone()
    if kind == "dataset_mean":
        if dataset_mean is None:
            raise ValueError("occluder 'dataset_mean' needs the images' mean colour")
        return torch.as_tensor(dataset_mean, dtype=image.dtype).view(shape).expand_as(image).clone()
    if kind == "blur":
        k = 2 * int(np.ceil(3 * blur_sigma)) + 1
        batch = image if image.dim() == 4 else image[None]
        out = TF.gaussian_blur(batch, [k, k], [blur_sigma, blur_sigma])
        return out if image.dim() == 4 else out[0]
    raise ConfigError(f"unknown occluder '{kind}'; valid: {', '.join(OCCLUDERS)}")


def mean_colour(dataset, indices, batch_size: int = 64) -> torch.Tensor:
    """Per-channel mean of the images ``indices`` (normalised space)."""
    total, count = None, 0
    for _, images, _ in iter_batches(dataset, indices, batch_size, progress=False):
        s = images.double().sum((0, 2, 3))
        total = s if total is None else total + s
        count += images.shape[0] * images.shape[2] * images.shape[3]
    return (total / max(count, 1)).float()


def model_overrides(spec) -> list[str]:
    """A pipeline's model entry as Hydra overrides: ``"bagnet33"`` -> ``[model=bagnet33]``;
    ``{option: small_cnn, width: 16, trainer: {epochs: 8}}`` -> ``[model=small_cnn, model.width=16,
    trainer.epochs=8]``."""
    spec = {"option": spec} if isinstance(spec, str) else dict(spec)
    out = [f"model={spec.pop('option')}"]
    for key, value in spec.items():
        if isinstance(value, Mapping):
            out += [f"{key}.{k}={_value(v)}" for k, v in value.items()]
        else:
            out.append(f"model.{key}={_value(value)}")
    return out


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def sub_runs(ctx, models: Mapping, *extra: str) -> dict:
    """label -> the ``task=train`` Context of every ``label -> model entry`` (this run's other overrides;
    ``extra`` ones, e.g. ``seed=1``, replace this run's value of that key)."""
    keys = {o.split("=", 1)[0] for o in extra}
    base = [o for o in ctx.overrides if not o.lstrip("+~").startswith("model") and o.split("=", 1)[0] not in keys]
    return {label: replace(ctx, overrides=base).with_overrides("task=train", *extra, *model_overrides(spec))
            for label, spec in models.items()}


def estimate_training(ctx, runs: Mapping[str, Sequence]) -> float:
    """Print, before anything trains, how long the runs still to train will take (a few measured steps of
    each; finished runs cost nothing); ``runs``: label -> (model entries, extra overrides). Returns seconds."""
    total, lines = 0.0, []
    for label, (models, extra) in runs.items():
        for name, sub in sub_runs(ctx, models, *extra).items():
            if finished_summary(sub.cfg, Path(sub.cfg.run_dir)) is not None:
                continue
            est = estimate_train_seconds(as_dict(sub.cfg), sub.data, sub.device)
            total += est["total_s"]
            lines.append(f"  {name}{label}: {est['total_s'] / 60:.0f} min ({est['epochs']} epochs x "
                         f"{est['steps_per_epoch']} steps x {est['s_per_step']:.2f} s)")
    if lines:
        print(f"estimate: {len(lines)} run(s) to train, about {total / 60:.0f} min on this machine as it is now "
              "(finished runs are reused; an interrupted one resumes):\n" + "\n".join(lines), flush=True)
    return total


def train_models(ctx, models: Mapping, *extra: str) -> dict:
    """Train (or reuse, or resume) every ``label -> model entry`` as ``task=train`` with this run's
    other overrides (``extra`` ones, e.g. ``seed=1``, replace this run's value of that key); returns
    label -> (the sub-run's Context, its summary)."""
    return {label: (sub, fit_run(sub)) for label, sub in sub_runs(ctx, models, *extra).items()}
