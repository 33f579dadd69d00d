"""Runner tasks: each is a plain function of the composed config (tests call them directly)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import io
from .data import DataBundle, build_data
from .distributed import DistInfo, cleanup, init_distributed
from .engine import resolve_device
from .provenance import provenance
from .result import Result
from .train import (ConfigError, _diff, build_model, evaluate_checkpoint, fit, load_checkpoint_file,
                    model_from_checkpoint, run_identity)

TASKS: dict[str, Callable[[DictConfig], Any]] = {}


def task(fn):
    TASKS[fn.__name__.removeprefix("task_")] = fn
    return fn


def as_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def run_task(cfg: DictConfig) -> Any:
    if cfg.task not in TASKS:
        raise ConfigError(f"unknown task '{cfg.task}'; valid: {', '.join(sorted(TASKS))}")
    return TASKS[cfg.task](cfg)


# ---------------------------------------------------------------- shared setup
def setup(cfg) -> tuple[torch.device, DistInfo]:
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    return device, dist_info


def prepare_run_dir(cfg, run_dir: Path, device: torch.device) -> dict:
    """Refuse a run dir that holds another config; then record config + provenance."""
    saved = run_dir / "config.yaml"
    if saved.is_file() and cfg.task == "train":
        old = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        diff = _diff(run_identity(old), run_identity(as_dict(cfg)))
        if diff:
            raise ConfigError(f"{run_dir} holds a run with another config ({'; '.join(diff[:3])}); "
                              "choose another run_name=... or remove that directory")
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed)
    io.write_text(OmegaConf.to_yaml(as_dict(cfg)), run_dir / "config.yaml")
    io.write_json(prov, run_dir / "provenance.json")
    return prov


def write_eval(results: dict, out_dir: Path, prefix: str = "") -> dict:
    metrics = {}
    for split, (m, df) in results.items():
        io.write_predictions(df, out_dir / f"{prefix}predictions_{split}.csv.gz")
        metrics[split] = m
    io.write_json(metrics, out_dir / f"{prefix}metrics.json")
    return metrics


def _check_classes(spec: dict, data: DataBundle, what: str) -> None:
    if spec["num_classes"] != data.num_classes:
        raise ConfigError(f"{what} has {spec['num_classes']} classes but data={data.info.get('name', '?')} has "
                          f"{data.num_classes}; pick the matching data=...")


# ---------------------------------------------------------------- train / eval
@task
def task_train(cfg) -> dict:
    device, dist_info = setup(cfg)
    data = build_data(cfg.data, seed=cfg.seed)
    run_dir = Path(cfg.run_dir)
    prov = prepare_run_dir(cfg, run_dir, device) if dist_info.is_main else {}
    summary = fit(as_dict(cfg), data, run_dir, device, dist_info, prov)
    model, spec = model_from_checkpoint(run_dir / "checkpoints" / "best.pt")
    results = evaluate_checkpoint(model, data, list(cfg.eval_splits), as_dict(cfg), device, dist_info)
    if dist_info.is_main:
        summary["eval"] = write_eval(results, run_dir / "eval")
        summary["data"] = data.info
        io.write_json({"provenance": prov, **summary}, run_dir / "summary.json")
        print(one_line_summary(cfg, summary, run_dir), flush=True)
    cleanup()
    return summary


def one_line_summary(cfg, summary: dict, run_dir: Path) -> str:
    ev = " ".join(f"{s} {m['top1']:.3f}/{m['top5']:.3f}" for s, m in summary.get("eval", {}).items())
    return (f"done: {cfg.model.tag} on {cfg.data.name}: best val top-1 {summary['best_val_top1']:.3f}; "
            f"top-1/top-5 {ev}; {summary['train_wall_s']:.0f}s ({summary['precision']}) -> {run_dir}")


def load_model(cfg, num_classes: int, checkpoint=None) -> tuple[nn.Module, dict]:
    """The config's model: from a checkpoint (which must match the model config) or as configured."""
    checkpoint = checkpoint if checkpoint is not None else cfg.checkpoint
    if checkpoint:
        return model_from_checkpoint(checkpoint, cfg.model)
    model = build_model(cfg.model, num_classes)
    if not (cfg.model.get("pretrained") or cfg.model.get("weights")):
        print(f"warning: {cfg.model.tag} has random weights (no checkpoint=..., no pretrained=true)", flush=True)
    return model, {"name": cfg.model.name, "num_classes": num_classes}


@task
def task_eval(cfg) -> dict:
    device, dist_info = setup(cfg)
    data = build_data(cfg.data, seed=cfg.seed)
    model, spec = load_model(cfg, data.num_classes)
    _check_classes(spec, data, f"checkpoint {cfg.checkpoint}" if cfg.checkpoint else f"model {cfg.model.tag}")
    run_dir = Path(cfg.run_dir)
    prov = prepare_run_dir(cfg, run_dir, device) if dist_info.is_main else {}
    results = evaluate_checkpoint(model, data, list(cfg.eval_splits), as_dict(cfg), device, dist_info)
    metrics = {}
    if dist_info.is_main:
        metrics = write_eval(results, run_dir)
        io.write_json({"provenance": prov, "metrics": metrics}, run_dir / "summary.json")
        print("done: " + "; ".join(f"{s} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f} (n={m['n']})"
                                   for s, m in metrics.items()) + f" -> {run_dir}", flush=True)
    cleanup()
    return metrics


# ---------------------------------------------------------------- experiments
def load_models(cfg, data: DataBundle) -> dict[str, nn.Module]:
    """``cfg.models``: name -> run dir / checkpoint, or a model config; empty = this config's model."""
    if not cfg.models:
        model, _ = load_model(cfg, data.num_classes)
        return {cfg.model.tag: model.eval()}
    out = {}
    for name, spec in cfg.models.items():
        if isinstance(spec, str):
            model, mspec = model_from_checkpoint(spec)
            _check_classes(mspec, data, f"models.{name} ({spec})")
        else:
            spec = dict(spec)
            model = build_model({"tag": name, **spec}, data.num_classes)
        out[name] = model.eval()
    return out


def predictions_for(cfg, data: DataBundle, device) -> dict[str, pd.DataFrame]:
    """Per-image predictions on ``cfg.split`` for every model: read from a run's eval/ when there, else computed."""
    out = {}
    for name, spec in (cfg.models or {cfg.model.tag: cfg.checkpoint}).items():
        pred = Path(str(spec)) / "eval" / f"predictions_{cfg.split}.csv.gz" if isinstance(spec, str) else None
        if pred is not None and pred.is_file():
            out[name] = pd.read_csv(pred)
            continue
        sub = OmegaConf.merge(cfg, {"models": {name: spec}}) if cfg.models else cfg
        model = next(iter(load_models(sub, data).values()))
        out[name] = evaluate_checkpoint(model, data, [cfg.split], as_dict(cfg), device)[cfg.split][1]
    return out


def _experiment(name: str):
    import importlib
    return importlib.import_module(f"experiments.{name}")


def write_experiment(cfg, result: Result, device, started: float) -> Path:
    out_dir = Path(cfg.out_dir)
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed, wall_s=time.perf_counter() - started)
    io.write_result(result, out_dir, prov)
    print(f"done: {cfg.task}: {result.summary} -> {out_dir}", flush=True)
    return out_dir


def _signature_task(name: str):
    def fn(cfg) -> Result:
        started = time.perf_counter()
        device, _ = setup(cfg)
        data = build_data(cfg.data, seed=cfg.seed)
        sig_cfg = {**as_dict(cfg.signatures.get(name, {})), "seed": cfg.seed, "device": str(device)}
        if name == "error_overlap":
            result = _experiment(name).run(predictions_for(cfg, data, device), data.classes, sig_cfg)
        else:
            models = {k: m.to(device) for k, m in load_models(cfg, data).items()}
            result = _experiment(name).run(models, data.split(cfg.split), sig_cfg, classes=data.classes,
                                           mean=data.mean, std=data.std)
        write_experiment(cfg, result, device, started)
        return result
    fn.__name__ = f"task_{name}"
    return task(fn)


for _name in ("scrambling", "additivity", "error_overlap", "sensitivity"):
    _signature_task(_name)


from . import pipelines  # noqa: E402,F401  (registers the table1 and demo tasks)


# ---------------------------------------------------------------- heatmaps and patches
def _explain_task(kind: str):
    def fn(cfg) -> Result:
        from . import explain
        started = time.perf_counter()
        device, _ = setup(cfg)
        data = build_data(cfg.data, seed=cfg.seed)
        models = load_models(cfg, data)
        ds = data.split(cfg.split)
        if kind == "heatmaps":
            result = explain.heatmaps_result(models, ds, data.classes, data.mean, data.std, cfg.num_images,
                                             cfg.seed, device)
        else:
            result = explain.patches_result(models, ds, data.classes, data.mean, data.std, k=8,
                                            per_class_images=cfg.num_images, device=device)
        out = Path(cfg.run_dir)
        io.write_result(result, out, provenance(config=as_dict(cfg), device=device, seed=cfg.seed,
                                                wall_s=time.perf_counter() - started))
        print(f"done: {kind}: {result.summary} -> {out}", flush=True)
        return result
    fn.__name__ = f"task_{kind}"
    return task(fn)


for _name in ("heatmaps", "patches"):
    _explain_task(_name)
