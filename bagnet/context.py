"""What a task gets: the config, the device, the process group and the command line (to compose sub-runs),
with the data and the models it names. A task is a function ``task(ctx: Context) -> Result``; the runner
(:mod:`bagnet.run`) builds the context once, calls the task and writes its Result with provenance.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from omegaconf import DictConfig

from .checkpoint import load_run
from .config import as_dict, compose, merge_overrides, validate
from .data import DataBundle, build_data
from .distributed import DistInfo
from .errors import ConfigError
from .identity import SPLIT_IGNORED, identity_diff
from .models import create_model
from .models.releases import pretrained_model
from .train import saved_config


@dataclass
class Context:
    cfg: DictConfig
    device: torch.device = torch.device("cpu")
    dist: DistInfo = field(default_factory=DistInfo)
    overrides: list[str] = field(default_factory=list)   # the command line's, to compose sub-configs

    @cached_property
    def data(self) -> DataBundle:
        return build_data(self.cfg.data, seed=self.cfg.seed)

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.out_dir)

    def with_overrides(self, *extra: str) -> "Context":
        """This run's command line plus ``extra`` overrides, composed by Hydra (same device and group)."""
        overrides = merge_overrides(self.overrides, extra)
        cfg = compose(overrides)
        validate(cfg)
        return Context(cfg, self.device, self.dist, overrides)

    def models(self) -> dict[str, nn.Module]:
        """``cfg.models`` (name -> run dir, checkpoint, model config), or else the config's model, in eval mode."""
        specs = dict(self.cfg.models) or {self.cfg.model.tag: None}
        return {name: self.model(name, spec).to(self.device).eval() for name, spec in specs.items()}

    def model(self, name: str, spec=None) -> nn.Module:
        data, cfg = self.data, self.cfg
        if spec is None:                               # the config's own model
            if cfg.checkpoint:
                check_run_data(cfg.checkpoint, cfg, "checkpoint")
                model, mspec = load_run(cfg.checkpoint, cfg.model)
                check_classes(mspec, data, f"checkpoint {cfg.checkpoint}")
                return model
            if not (cfg.model.get("pretrained") or cfg.model.get("weights")):
                print(f"warning: {cfg.model.tag} has random weights (no checkpoint=..., no pretrained=true)",
                      flush=True)
            return create_model(**cfg.model, num_classes=data.num_classes)
        if isinstance(spec, str):                      # a trained run
            check_run_data(spec, cfg, f"models.{name}")
            model, mspec = load_run(spec)
            check_classes(mspec, data, f"models.{name} ({spec})")
            return model
        if spec.get("pretrained"):                     # a release, as published
            return pretrained_model(as_dict(spec), data, f"models.{name}", cfg.get("weights_dir"))
        return create_model(**as_dict(spec), num_classes=data.num_classes)


def check_run_data(spec, cfg: DictConfig, what: str, same_images: bool = False) -> None:
    """A trained run used by an experiment must have been trained on the experiment's data: the same dataset,
    root and split settings and seed (so its test split is this test split, and holds none of its training
    images); ``same_images``: also the same image size and resizing (its saved predictions are reused)."""
    path = Path(str(spec))
    run_dir = path if path.is_dir() else path.parent.parent
    saved = saved_config(run_dir)
    if saved is None or "data" not in saved:     # a bare checkpoint file: only its classes can be checked
        return

    new = as_dict(cfg)
    # keys only one side has are a newer (or older) default, except the dataset's name and root
    shared = (set(saved["data"]) & set(new["data"])) | {"name", "root"}

    def identity(c: Mapping) -> dict:
        ignored = SPLIT_IGNORED[:-2] if same_images else SPLIT_IGNORED
        d = {k: v for k, v in dict(c["data"]).items() if k in shared and k not in ignored}
        if d.get("root") is not None:
            d["root"] = str(Path(str(d["root"])).expanduser().resolve())
        return {"data": d, "seed": c.get("seed")}
    diff = identity_diff(identity(saved), identity(new))
    if diff:
        raise ConfigError(f"{what} ({spec}) was trained on other data than this {cfg.task} uses "
                          f"({'; '.join(diff[:3])}); pass data=... / data.root=... / seed=... as the run had them")


def check_classes(spec: Mapping, data: DataBundle, what: str) -> None:
    """A trained model's classes must be the data's: the same count, names and order."""
    name = data.info.get("name", "?")
    if spec["num_classes"] != data.num_classes:
        raise ConfigError(f"{what} has {spec['num_classes']} classes but data={name} has "
                          f"{data.num_classes}; pick the matching data=...")
    trained = spec.get("classes")
    if trained is not None and list(trained) != list(data.classes):
        pairs = [(a, b) for a, b in zip(trained, data.classes) if a != b]
        shown = ", ".join(f"{a} vs {b}" for a, b in pairs[:3])
        raise ConfigError(f"{what} was trained on other classes than data={name} has ({len(pairs)} of "
                          f"{data.num_classes} differ: {shown}); pick the matching data=... or data.classes=...")


