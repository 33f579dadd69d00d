"""What a task gets, and the library's own tasks (train, eval).

A task is a function ``task(ctx: Context) -> Result``. The runner (:mod:`bagnet.run`) builds the
context once (device, process group, config), calls the task, and writes its Result with provenance.
Experiments and pipelines (``experiments/``) are tasks of the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import io
from .checkpoint import load_run
from .config import as_dict, compose, merge_overrides, validate
from .data import DataBundle, build_data
from .distributed import DistInfo
from .errors import ConfigError
from .models import create_model
from .provenance import provenance
from .result import Result
from .train import check_identity, evaluate_model, fit


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

    def signature_cfg(self, name: str) -> dict:
        """``signatures.<name>`` plus the run's seed and device."""
        return {**as_dict(self.cfg.signatures.get(name, {})), "seed": self.cfg.seed, "device": str(self.device)}

    def models(self) -> dict[str, nn.Module]:
        """``cfg.models`` (name -> run dir / checkpoint, or a model config), on the device, in eval mode;
        empty: the config's model (from ``checkpoint=`` when given)."""
        specs = dict(self.cfg.models) or {self.cfg.model.tag: None}
        return {name: self.model(name, spec).to(self.device).eval() for name, spec in specs.items()}

    def model(self, name: str, spec=None) -> nn.Module:
        data, cfg = self.data, self.cfg
        if spec is None:                               # the config's own model
            if cfg.checkpoint:
                model, mspec = load_run(cfg.checkpoint, cfg.model)
                check_classes(mspec, data, f"checkpoint {cfg.checkpoint}")
                return model
            if not (cfg.model.get("pretrained") or cfg.model.get("weights")):
                print(f"warning: {cfg.model.tag} has random weights (no checkpoint=..., no pretrained=true)",
                      flush=True)
            return create_model(**cfg.model, num_classes=data.num_classes)
        if isinstance(spec, str):                      # a trained run
            model, mspec = load_run(spec)
            check_classes(mspec, data, f"models.{name} ({spec})")
            return model
        return create_model(**as_dict(spec), num_classes=data.num_classes)

    def predictions(self) -> dict[str, pd.DataFrame]:
        """Per-image predictions on ``cfg.split`` for every model: a run's saved ones when there, else computed."""
        cfg = self.cfg
        out = {}
        for name, spec in (dict(cfg.models) or {cfg.model.tag: None}).items():
            saved = Path(str(spec)) / "eval" / f"predictions_{cfg.split}.csv.gz" if isinstance(spec, str) else None
            if saved is not None and saved.is_file():
                out[name] = pd.read_csv(saved)
                continue
            model = self.model(name, spec).eval()
            out[name] = evaluate_model(model, self.data, [cfg.split], as_dict(cfg), self.device)[cfg.split][1]
        return out


def check_classes(spec: Mapping, data: DataBundle, what: str) -> None:
    if spec["num_classes"] != data.num_classes:
        raise ConfigError(f"{what} has {spec['num_classes']} classes but data={data.info.get('name', '?')} has "
                          f"{data.num_classes}; pick the matching data=...")


# ---------------------------------------------------------------- run directories
def prepare_run_dir(cfg: DictConfig, run_dir: Path, device: torch.device, check: bool) -> dict:
    """Refuse a run dir that holds another training run (``check``); then record config + provenance."""
    saved = run_dir / "config.yaml"
    if check and saved.is_file():
        check_identity(_identity_of_saved(saved), as_dict(cfg), run_dir)
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed)
    io.write_text(OmegaConf.to_yaml(as_dict(cfg)), run_dir / "config.yaml")
    io.write_json(prov, run_dir / "provenance.json")
    return prov


def _identity_of_saved(path: Path) -> dict:
    from .train import run_identity
    return run_identity(OmegaConf.to_container(OmegaConf.load(path), resolve=False))


def write_eval(results: dict, out_dir: Path) -> dict:
    metrics = {}
    for split, (m, df) in results.items():
        io.write_predictions(df, out_dir / f"predictions_{split}.csv.gz")
        metrics[split] = m
    io.write_json(metrics, out_dir / "metrics.json")
    return metrics


# ---------------------------------------------------------------- the library's tasks
def fit_run(ctx: Context) -> dict:
    """Train ``cfg.model`` into ``cfg.run_dir`` (resuming or reusing it), then evaluate ``best.pt`` on
    ``eval_splits``; returns the run's summary (also written to ``summary.json``)."""
    cfg, data = ctx.cfg, ctx.data
    run_dir = Path(cfg.run_dir)
    prov = prepare_run_dir(cfg, run_dir, ctx.device, check=True) if ctx.dist.is_main else {}
    summary = fit(as_dict(cfg), data, run_dir, ctx.device, ctx.dist)
    model, _ = load_run(run_dir / "checkpoints" / "best.pt")
    results = evaluate_model(model, data, list(cfg.eval_splits), as_dict(cfg), ctx.device, ctx.dist)
    if ctx.dist.is_main:
        summary["eval"] = write_eval(results, run_dir / "eval")
        summary["data"] = data.info
        io.write_json({"provenance": prov, **summary}, run_dir / "summary.json")
    return summary


def train(ctx: Context) -> Result:
    """The ``train`` task: :func:`fit_run`; its files are the run dir's, the Result is the log line."""
    cfg = ctx.cfg
    s = fit_run(ctx)
    ev = " ".join(f"{split} {m['top1']:.3f}/{m['top5']:.3f}" for split, m in s.get("eval", {}).items())
    return Result(summary=f"{cfg.model.tag} on {cfg.data.name}: best val top-1 {s['best_val_top1']:.3f}; "
                          f"top-1/top-5 {ev}; {s['train_wall_s']:.0f}s ({s['precision']})")


def evaluate(ctx: Context) -> Result:
    """Top-1/top-5 and per-image predictions of ``checkpoint=`` (or a pretrained model) -> the run dir."""
    cfg = ctx.cfg
    model = ctx.model(cfg.model.tag)
    run_dir = Path(cfg.run_dir)
    prov = prepare_run_dir(cfg, run_dir, ctx.device, check=False) if ctx.dist.is_main else {}
    results = evaluate_model(model, ctx.data, list(cfg.eval_splits), as_dict(cfg), ctx.device, ctx.dist)
    metrics = {}
    if ctx.dist.is_main:
        metrics = write_eval(results, run_dir)
        io.write_json({"provenance": prov, "metrics": metrics}, run_dir / "summary.json")
    return Result(summary="; ".join(f"{s} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f} (n={m['n']})"
                                    for s, m in metrics.items()))
