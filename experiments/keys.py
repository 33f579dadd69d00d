"""The keys of an experiment: its typed config (a dataclass over :class:`ExperimentConfig`), every key's range
(:func:`ranged`), checked in one line naming ``experiments.<name>.<key>`` before any work."""
from __future__ import annotations

import copy
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Mapping, Optional

import matplotlib

matplotlib.use("Agg")  # experiments build Figure objects only; never open a window


from bagnet.config import validated  # noqa: E402
from bagnet.errors import ConfigError  # noqa: E402


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
    their own are checked key by key."""
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
    """Keys every experiment understands; each experiment's ``Config`` extends it. The experiments
    config group (configs/experiments/default.yaml) holds the values; this is their schema. Every key has a
    range (:func:`ranged`), checked before any work (``experiments.registry.check``) and again by :func:`typed_cfg`."""
    seed: int = ranged(0, ge=0, lt=2 ** 63)
    device: str = "cpu"
    weights_dir: Optional[str] = None   # the run's weights_dir: local copies of released weights (a run key)
    batch_size: int = ranged(64, ge=1)
    # evaluation images: the first ``num_images`` of a seeded permutation (None = all)
    num_images: Optional[int] = ranged(256, ge=1)
    # the side this experiment's images are resized to (BagNets run at any size, CNNs too, though trained at one);
    # None: data.image_size. Experiments on per-image predictions (accuracy, error_overlap) use data.image_size
    image_size: Optional[int] = ranged(None, ge=8)
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
