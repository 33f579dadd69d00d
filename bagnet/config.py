"""Config composition and typed schemas.

Hydra composes ``configs/``; the dataclasses below are the schemas of the ``trainer`` and ``data``
groups (OmegaConf structured configs): an unknown key, a value of the wrong type or an impossible
value is a :class:`ConfigError` that names the key, raised before anything is written.
Experiments validate their own ``experiments.<name>`` block the same way (``experiments.keys``).
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

# configs/ of a checkout, or bagnet/configs/ of an installed wheel (pyproject.toml ships them there)
_PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = str(_PACKAGE / "configs" if (_PACKAGE / "configs" / "config.yaml").is_file()
                 else _PACKAGE.parent / "configs")


def as_dict(cfg) -> dict:
    """A DictConfig (interpolations resolved) or mapping as a plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


# Functions that put the experiment layer's structured-config schemas into Hydra's ConfigStore; that layer adds
# its own when imported (experiments.registry). The library names no experiment.
SCHEMA_STORES: list[Callable[[], None]] = []


def add_schema_store(store: Callable[[], None]) -> None:
    if store not in SCHEMA_STORES:
        SCHEMA_STORES.append(store)


def store_schemas() -> None:
    """Put the structured-config schemas into Hydra's ConfigStore before a compose: the library's own
    (``trainer/schema``), then those the experiment layer added (:func:`add_schema_store`)."""
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(group="trainer", name="schema", node=TrainerNode)
    for store in SCHEMA_STORES:
        store()


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m bagnet.run <overrides>`` would run with (inside or outside a Hydra app)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from .loggers import check_overrides
    check_overrides(overrides)      # an unknown logger= in one line, not Hydra's several
    store_schemas()
    from hydra.core.global_hydra import GlobalHydra
    if GlobalHydra.instance().is_initialized():
        return hydra_compose("config", overrides=list(overrides))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def merge_overrides(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``base`` with the keys that ``extra`` sets removed, then ``extra`` (Hydra refuses a key twice)."""
    def key(o: str) -> str:
        return o.split("=", 1)[0].lstrip("+~")
    taken = {key(o) for o in extra}
    return [o for o in base if key(o) not in taken] + list(extra)


def validated(schema: type, values: Mapping | None, where: str) -> Any:
    """``values`` checked against the dataclass ``schema`` (unknown keys, types, ``__post_init__``)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(dict(values or {})))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = f"{where}.{e.full_key}" if getattr(e, "full_key", None) else where
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{key}: {msg}") from None


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# ---------------------------------------------------------------- trainer
@dataclass
class TrainerConfig:
    """The ``trainer`` group: the home of every key and its default. Stored in Hydra's ConfigStore as
    ``trainer/schema`` (:data:`TrainerNode`); configs/trainer/default.yaml states only what differs."""
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 128
    optimizer: str = "sgd"               # sgd | adamw | adam (one param group, as the COMP6248 notebooks)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5.0e-5
    schedule: str = "cosine"             # cosine | step | constant | plateau_halving (per epoch, on val top-1)
    warmup_epochs: float = 1
    step_size: int = 30                  # schedule=step: epochs per decay
    gamma: float = 0.1
    patience: int = 3                    # plateau_halving: lr x factor after this many epochs without a new best
                                         # (counted since the last decay)
    early_stop: int = 16                 # plateau_halving: stop after this many consecutive epochs without a new best
                                         # (ties are a new best)
    factor: float = 0.5                  # plateau_halving: lr multiplier per decay
    restart_optimizer: bool = True       # plateau_halving: a decay clears the optimizer state (the notebooks' new Adam)
    label_smoothing: float = 0.1
    accum_steps: int = 1                 # gradient accumulation
    precision: str = "auto"              # auto (bf16 on CUDA and CPUs with avx512_bf16/AMX) | fp32 | bf16 | fp16 (CUDA)
    channels_last: Any = "auto"          # auto | true | false
    compile: bool = False                # torch.compile the training model
    fused_optimizer: bool = False        # adam / adamw: torch's fused kernel (same update; not in a run's identity)
    workers: int = 0                     # DataLoader processes (configs/trainer/default.yaml: the data config's)
    progress: bool = True
    resume: bool = True                  # continue from <run_dir>/checkpoints/last.pt when it exists
    max_steps_per_epoch: Optional[int] = None
    max_eval_images: Optional[int] = None  # smoke runs (debug=fast): val/test on a seeded subset of this many images
    # Before each validation, re-estimate BN layers whose momentum is tiny (the BagNet stem's 0.001, as
    # released) from this many training batches; otherwise short runs evaluate with stale statistics.
    bn_recalibrate_batches: int = 16
    log_every_n_steps: int = 1           # the loggers (logger=...) get every n-th optimizer step's scalars

    def __post_init__(self):
        k = "trainer"
        _check(self.epochs >= 0, f"{k}.epochs", f"must be >= 0, got {self.epochs}")
        for name in ("batch_size", "eval_batch_size", "accum_steps"):
            _check(getattr(self, name) >= 1, f"{k}.{name}", f"must be >= 1, got {getattr(self, name)}")
        _check(math.isfinite(self.lr) and self.lr > 0, f"{k}.lr", f"must be a finite number > 0, got {self.lr}")
        _check(self.momentum >= 0, f"{k}.momentum", f"must be >= 0, got {self.momentum}")
        if self.optimizer == "sgd" and self.nesterov:
            _check(self.momentum > 0, f"{k}.momentum", "Nesterov SGD needs momentum > 0 (or trainer.nesterov=false)")
        _check(self.weight_decay >= 0, f"{k}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.warmup_epochs >= 0, f"{k}.warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        _check(0 <= self.label_smoothing < 1, f"{k}.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.schedule == "step":
            _check(self.step_size >= 1, f"{k}.step_size", f"must be >= 1, got {self.step_size}")
            _check(self.gamma > 0, f"{k}.gamma", f"must be > 0, got {self.gamma}")
        _check(self.workers >= 0, f"{k}.workers", f"must be >= 0, got {self.workers}")
        _check(self.optimizer in ("sgd", "adamw", "adam"), f"{k}.optimizer",
               f"'{self.optimizer}'; valid: sgd, adamw, adam")
        _check(self.schedule in ("cosine", "step", "constant", "plateau_halving"), f"{k}.schedule",
               f"'{self.schedule}'; valid: cosine, step, constant, plateau_halving")
        if self.schedule == "plateau_halving":
            _check(self.warmup_epochs == 0, f"{k}.warmup_epochs", "plateau_halving has no warmup; set 0")
            _check(self.patience >= 1 and self.early_stop >= 1, f"{k}.patience/early_stop", "must be >= 1")
            _check(0 < self.factor < 1, f"{k}.factor", f"must be in (0, 1), got {self.factor}")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"), f"{k}.precision",
               f"'{self.precision}'; valid: auto, fp32, bf16, fp16")
        _check(self.channels_last in ("auto", True, False), f"{k}.channels_last", "valid: auto, true, false")
        _check(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, f"{k}.max_steps_per_epoch",
               "must be null or >= 1")
        _check(self.max_eval_images is None or self.max_eval_images >= 1, f"{k}.max_eval_images",
               "must be null or >= 1")
        _check(self.log_every_n_steps >= 1, f"{k}.log_every_n_steps", f"must be >= 1, got {self.log_every_n_steps}")


def untyped_node(schema: type, name: str) -> type:
    """``schema``'s keys and defaults, every type ``Any``: the ConfigStore node of a group. Types are checked by
    :func:`validate`, which names the key in one line (exit 2) before anything is written; a typed node would make
    Hydra refuse a wrong type while composing, in its own message, and turn an int it was given into a float."""
    def default(f):
        if f.default_factory is not MISSING:
            return field(default_factory=f.default_factory)
        return field(default=f.default)
    node = make_dataclass(name, [(f.name, Any, default(f)) for f in fields(schema)])
    node.__module__ = __name__     # importable by name: a composed config pickles (sweeps, launchers)
    return node


TrainerNode = untyped_node(TrainerConfig, "TrainerNode")


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = "synthetic"
    root: Optional[str] = None
    image_size: int = 224
    workers: int = 0
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    # Photo datasets (synthetic images are generated at image_size, never cropped or augmented):
    resize: str = "crop"                 # crop: Resize(S*256/224) + CenterCrop(S) | squash: Resize((S, S)), no crop
    train_augment: bool = True           # false: training images get the eval transform (the report's notebooks)

    def __post_init__(self):
        _check(self.resize in ("crop", "squash"), "data.resize", f"'{self.resize}'; valid: crop, squash")
        _check(self.image_size >= 8, "data.image_size", f"must be >= 8, got {self.image_size}")
        _check(self.workers >= 0, "data.workers", f"must be >= 0, got {self.workers}")


@dataclass
class PhotoDataConfig(DataConfig):
    crop_scale: list[float] = field(default_factory=lambda: [0.35, 1.0])
    flip: bool = True
    cache: bool = False
    on_bad_image: str = "skip"           # skip | error

    def __post_init__(self):
        super().__post_init__()
        _check(self.on_bad_image in ("skip", "error"), "data.on_bad_image",
               f"'{self.on_bad_image}'; valid: skip, error")
        _check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
               "data.crop_scale", f"must be [lo, hi] with 0 < lo <= hi <= 1, got {self.crop_scale}")


@dataclass
class SyntheticDataConfig(DataConfig):
    image_size: int = 112
    samples_per_class: int = 200
    val_per_class: Optional[int] = None
    test_per_class: Optional[int] = None
    classes: Optional[list[str]] = None
    num_classes: Optional[int] = None
    clutter: float = 12.0

    def __post_init__(self):
        super().__post_init__()
        # below 48 px the generator cannot place a class's motifs (it used to loop forever)
        _check(self.image_size >= 48, "data.image_size", f"synthetic data needs >= 48, got {self.image_size}")


@dataclass
class Scene15DataConfig(PhotoDataConfig):
    train_per_class: int = 100
    val_fraction: float = 0.2
    test_per_class: int = 80
    drop_duplicates: bool = True


@dataclass
class ImageNetDataConfig(PhotoDataConfig):
    label_space: str = "imagenet1k"      # imagenet1k | compact
    val_from_train: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        _check(self.label_space in ("imagenet1k", "compact"), "data.label_space",
               f"'{self.label_space}'; valid: imagenet1k, compact")


@dataclass
class FolderDataConfig(PhotoDataConfig):
    val_fraction: float = 0.2


DATA_SCHEMAS = {"synthetic": SyntheticDataConfig, "scene15": Scene15DataConfig, "imagenet": ImageNetDataConfig,
                "imagenette": ImageNetDataConfig, "imagefolder": FolderDataConfig}


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def validate(cfg: DictConfig) -> None:
    """Check ``cfg.trainer``, ``cfg.data`` (their schemas), ``overwrite``, ``seed``, ``device``, ``run_name`` and
    ``logger`` (ConfigError naming the key)."""
    resolved = as_dict(cfg)
    _check(isinstance(resolved.get("overwrite", False), bool), "overwrite",
           f"must be true or false, got {resolved.get('overwrite')!r}")
    seed = resolved.get("seed", 0)
    # below 2^63: torch's generators take a signed 64-bit seed, and checkpoints store it as one
    _check(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2 ** 63, "seed",
           f"must be an integer in [0, 2^63), got {seed!r}")
    device = str(resolved.get("device", "auto"))
    _check(DEVICE_PATTERN.fullmatch(device) is not None, "device", f"'{device}'; valid: auto, cpu, cuda, cuda:N, mps")
    name = str(resolved.get("run_name", ""))
    # one path component: a run name must not reach outside its model's folder (../results/...) or be it
    _check(name not in ("", ".", "..") and "/" not in name and "\\" not in name, "run_name",
           f"'{name}' must be one folder name (no '/', not '.' or '..')")
    _check(not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name), "run_name",
           f"{name!r} holds control characters; use letters, digits and punctuation")
    # the file system's limit on one folder name (NAME_MAX: 255 bytes on Linux)
    _check(len(name.encode()) <= 255, "run_name",
           f"{len(name.encode())} bytes, more than a folder name may have (255); use a shorter name")
    validated(TrainerConfig, resolved["trainer"], "trainer")
    name = resolved["data"].get("name")
    if name not in DATA_SCHEMAS:
        raise ConfigError(f"unknown data '{name}'; valid: {', '.join(DATA_SCHEMAS)}")
    validated(DATA_SCHEMAS[name], resolved["data"], "data")
    from .loggers import check as check_loggers
    check_loggers(resolved.get("logger"))
