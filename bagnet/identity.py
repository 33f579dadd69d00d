"""Identity: what a run, an evaluation, a results folder and a unit of an experiment depend on, and so
when a saved one may be resumed, reused or replaced. One home for all of them: a key that cannot change what
is computed (where files go, progress bars, workers) is named here, once, with its reason."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from .checkpoint import checkpoint_path
from .config import as_dict
from .errors import ConfigError
from .utils import file_sha256


# ---------------------------------------------------------------- run identity
# Keys that cannot change what a run computes (how it is shown, how fast its data loads, whether it
# resumes); every other key of model, data and trainer, and the seed, is the run's identity.
RUN_IDENTITY_IGNORED = {"trainer": ("progress", "workers", "resume", "fused_optimizer", "log_every_n_steps"),
                        "data": ("workers", "cache")}
# Version 2 added data.root and trainer.max_steps_per_epoch; checkpoints without a version predate it.
IDENTITY_VERSION = 2


PLATEAU_KEYS = ("patience", "early_stop", "factor", "restart_optimizer")
NEW_DATA_DEFAULTS = {"resize": "crop", "train_augment": True}


def run_identity(cfg: Mapping) -> dict:
    """The parts of a config that define a training run; a resumed or reused run must match them."""
    ignored = RUN_IDENTITY_IGNORED
    t = {k: v for k, v in dict(cfg["trainer"]).items() if k not in ignored["trainer"]}
    d = {k: v for k, v in dict(cfg["data"]).items() if k not in ignored["data"]}
    # Keys added later enter the identity only when they matter, so runs made before them stay reusable.
    if t.get("schedule") != "plateau_halving":
        for k in PLATEAU_KEYS:
            t.pop(k, None)
    if t.get("max_eval_images") is None:       # added later: uncapped runs keep their identity
        t.pop("max_eval_images", None)
    for k, default in NEW_DATA_DEFAULTS.items():
        if d.get(k, default) == default:
            d.pop(k, None)
    return {"model": dict(cfg["model"]), "data": d, "trainer": t, "seed": cfg["seed"]}


def checkpoint_identity(ckpt: Mapping, saved_cfg: Mapping | None = None) -> dict:
    """The identity a checkpoint was trained under. Checkpoints from before ``IDENTITY_VERSION`` 2 did
    not record data.root and trainer.max_steps_per_epoch: those come from the run's saved config."""
    identity = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in ckpt["identity"].items()}
    if ckpt.get("identity_version", 1) < IDENTITY_VERSION and saved_cfg is not None:
        identity["data"].setdefault("root", dict(saved_cfg["data"]).get("root"))
        identity["trainer"].setdefault("max_steps_per_epoch", dict(saved_cfg["trainer"]).get("max_steps_per_epoch"))
    return identity


def identity_diff(a: Any, b: Any, prefix: str = "", added: bool = True, missing: Any = None) -> list[str]:
    """Human-readable differences between two nested configs ('key: old -> new'). A key one side lacks reads
    as ``missing`` there; ``added=False`` ignores keys only ``b`` has (a newer default, not another config)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b)) if added else sorted(a)
        return [d for k in keys
                for d in identity_diff(a.get(k, missing), b.get(k, missing), f"{prefix}{k}.", added, missing)]
    return [] if a == b else [f"{prefix[:-1]}: {a} -> {b}"]


def check_identity(saved: Mapping, cfg: Mapping, run_dir: Path) -> None:
    diff = identity_diff(saved, run_identity(cfg))
    if diff:
        raise ConfigError(f"{run_dir} holds a run with another config ({'; '.join(diff[:3])}); "
                          "choose another run_name=... or remove that directory")


# ---------------------------------------------------------------- evaluations and experiments' runs
# Data keys that do not change which images are in which split (training augmentation, loading).
SPLIT_IGNORED = ("workers", "cache", "on_bad_image", "train_augment", "crop_scale", "flip", "image_size", "resize")


def _eval_config_identity(c: Mapping) -> dict:
    data = {k: v for k, v in dict(c["data"]).items() if k not in RUN_IDENTITY_IGNORED["data"]}
    return {"task": c.get("task"), "model": dict(c["model"]), "data": data,
            "eval_splits": list(c.get("eval_splits") or []), "seed": c.get("seed")}


def eval_identity(cfg: DictConfig) -> dict:
    """What an evaluation's results depend on: the checkpoint file (path and sha256 of its content),
    the model, the data, the splits and the seed."""
    c = as_dict(cfg)
    ckpt = None
    if c.get("checkpoint"):
        path = checkpoint_path(c["checkpoint"]).resolve()
        ckpt = {"path": str(path), "sha256": file_sha256(path)}
    return {**_eval_config_identity(c), "task": "eval", "checkpoint": ckpt}


# ---------------------------------------------------------------- results folders and units
# Config keys that cannot change a task's results: where files go, the device, progress bars, workers
# (and tasks/schemas: results made before the registry named the tasks record them).
RESULTS_IGNORED = ("paths", "out_dir", "run_dir", "device", "overwrite", "trainer.progress", "trainer.workers",
                   "data.workers", "tasks", "schemas", "logger", "trainer.log_every_n_steps")


# top-level keys renamed since results were saved: a saved config is read under today's names (the block of every
# experiment's settings was called ``signatures`` until it held more than the four signatures)
RENAMED = {"signatures": "experiments"}

# A named dataset is the same images wherever it lies (its loader checks the layout: class folders, splits), so
# its ``data.root`` is where files are, like ``paths``; an ``imagefolder`` is known only by its path.
LOCATED_BY_ROOT = ("imagefolder",)


def current_names(config: Mapping) -> dict:
    """``config`` with its top-level keys under today's names (:data:`RENAMED`)."""
    return {RENAMED.get(k, k): v for k, v in dict(config).items()}


def experiment_settings(config: Mapping) -> dict:
    """The ``experiments`` block (every experiment's settings) of a saved or composed config."""
    return dict(current_names(config).get("experiments") or {})


def results_identity(config: Mapping) -> dict:
    """``config`` (under today's key names) without the keys of :data:`RESULTS_IGNORED`; a model that is a run
    under ``paths.runs_dir`` named relative to it (the same runs in another runs folder are the same models); a
    named dataset without its ``data.root`` (:data:`LOCATED_BY_ROOT`)."""
    out = copy.deepcopy(current_names(config))
    data = out.get("data")
    if isinstance(data, dict) and data.get("name") not in LOCATED_BY_ROOT:
        data.pop("root", None)
    runs_dir = str((out.get("paths") or {}).get("runs_dir") or "").rstrip("/")
    if runs_dir and isinstance(out.get("models"), dict):
        out["models"] = {k: "<runs_dir>" + v[len(runs_dir):] if isinstance(v, str) and v.startswith(runs_dir + "/")
                         else v for k, v in out["models"].items()}
    for key in RESULTS_IGNORED:
        *parents, last = key.split(".")
        d = out
        for k in parents:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(last, None)
    return out


def is_release(spec) -> bool:
    """A model config of released weights (``pretrained: true``, no other ``weights``): its weights are known."""
    return isinstance(spec, Mapping) and bool(spec.get("pretrained")) and not spec.get("weights")


def model_key(spec, weights_dir: str | None = None) -> dict | None:
    """What identifies a model of ``cfg.models``: a run's checkpoint by path and content; a release by its config
    and the file it loads (in ``weights_dir``, else where :func:`~bagnet.models.releases.locate_weights` finds
    it, else "download"); any other model config by itself."""
    if isinstance(spec, str):
        path = Path(spec)
        ckpt = path / "checkpoints" / "best.pt" if path.is_dir() else path
        return {"path": str(path.resolve()), "sha256": file_sha256(ckpt) if ckpt.is_file() else None}
    if spec is None:
        return None
    spec = as_dict(spec)
    if spec.get("pretrained") and not spec.get("weights"):
        from .models import default_cfg
        from .models.releases import locate_weights
        from .models.weights import find_local
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "tag")}
        release = default_cfg(spec["name"], **kwargs)
        found = (find_local(release["file"], weights_dir) if release else None) or locate_weights(spec["name"], **kwargs)
        spec["weights"] = str(found) if found else "download"
    return spec


def data_key(cfg: Mapping) -> dict:
    """What identifies the images an experiment runs on: the data config (loading aside), the split, the seed."""
    d = as_dict(cfg["data"])
    d.pop("workers", None)
    return {"data": d, "split": cfg["split"], "seed": cfg["seed"]}
