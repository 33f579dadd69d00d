"""What a task gets, and the library's own tasks (train, eval).

A task is a function ``task(ctx: Context) -> Result``. The runner (:mod:`bagnet.run`) builds the
context once (device, process group, config), calls the task, and writes its Result with provenance.
Experiments and pipelines (``experiments/``) are tasks of the same shape.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from . import io
from .checkpoint import load_checkpoint, load_run, model_kwargs
from .config import as_dict, compose, merge_overrides, validate
from .data import DataBundle, DataError, build_data
from .engine import resolve_precision
from .distributed import DistInfo
from .errors import ConfigError, Interrupted, UserError
from .identity import (SPLIT_IGNORED, _eval_config_identity, eval_identity, check_identity, checkpoint_identity, identity_diff, run_identity)
from .models import create_model
from .models.releases import pretrained_model
from .provenance import provenance
from .result import Result
from .train import check_data_fingerprint, evaluate_model, fit, saved_config


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


def validate_model(cfg: DictConfig, data: DataBundle, model: nn.Module | None = None) -> nn.Module:
    """Build ``cfg.model`` (unless ``model`` is given) and run one image of ``data.image_size`` through it
    on the CPU without gradients: a model that cannot be built, or cannot run at that size, is a
    ConfigError naming the key to change, before anything is written."""
    tag = cfg.model.get("tag", cfg.model.name)
    args = ", ".join(f"model.{k}={v}" for k, v in model_kwargs(cfg.model).items()
                     if not (k in ("pretrained", "weights") and not v)) or "its defaults"
    if model is None:
        try:
            with warnings.catch_warnings():     # e.g. "zero-element tensors": the forward below says it better
                warnings.simplefilter("ignore")
                model = create_model(**as_dict(cfg.model), num_classes=data.num_classes)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001  whatever the builder raises for impossible arguments
            raise ConfigError(f"model={tag} cannot be built with {args}: {_one_line(e)}") from None
    size = int(data.image_size)
    err = _forward_error(model, size)
    if err is not None:
        if size < 224 and _forward_error(model, 224) is None:    # it runs on larger images: the size is wrong
            raise ConfigError(f"data.image_size={size} is too small for model={tag} ({err}); use a larger "
                              "data.image_size")
        raise ConfigError(f"model={tag} cannot run with {args} ({size} px images: {err}); check the model.* values")
    return model


def _forward_error(model: nn.Module, size: int) -> str | None:
    p = next(model.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    was_training = model.training
    model.eval()    # BN in train mode cannot take one image of 1x1 features; eval mode changes no state
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001  shape errors come as RuntimeError, ValueError, ...
        return _one_line(e)
    finally:
        model.train(was_training)
    return None


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}"


def check_splits(data: DataBundle, splits) -> None:
    """The splits a task reads must hold images (an empty one would fail only after files were written)."""
    sizes = {s: len(data.split(s)) for s in dict.fromkeys(splits)}
    empty = [s for s, n in sizes.items() if n == 0]
    if empty:
        raise DataError(f"data={data.info.get('name', '?')}: the {'/'.join(empty)} split is empty (sizes {sizes}); "
                        "check data.root and the data's split settings")


def bad_image_counts(data: DataBundle) -> dict[str, int]:
    """Undecodable images met (and skipped) per split so far (0 for in-memory data)."""
    return {s: int(getattr(data.split(s), "bad_images", 0)) for s in ("train", "val", "test")}


# ---------------------------------------------------------------- run directories
def check_writable(path: Path, key: str) -> None:
    """Refuse, before anything is created, a folder that cannot be written: ``path`` when it exists, else the
    nearest folder above it that exists (where it would be created). ``key``: the config key that chose it."""
    path = Path(path).absolute()
    there = path
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: {there} is a file, not a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        hint = ("paths.runs_dir=... (or BAGNET_RUNS_DIR)" if key == "run_dir" else
                "out_dir=... or paths.results_dir=..." if key == "out_dir" else f"{key}=...")
        raise ConfigError(f"{key}: cannot write {path}: {there} is read-only; set {hint} to a writable folder")


def check_run_dir(cfg: DictConfig, run_dir: Path, identity: dict | None = None) -> None:
    """Refuse a run dir that holds another run: for training (``identity`` None) one whose saved
    config has another :func:`run_identity` or is an evaluation; for an evaluation (``identity`` =
    :func:`eval_identity`) one that holds anything but an evaluation with that identity."""
    saved = saved_config(run_dir)
    if identity is None:
        if saved is not None:
            if saved.get("task") == "eval":
                raise ConfigError(f"{run_dir} holds an evaluation (task=eval), not a training run; "
                                  "choose another run_dir=... or run_name=...")
            if not holds_training(run_dir):   # a command that failed before its first epoch: nothing to keep
                return
            check_identity(run_identity(saved), as_dict(cfg), run_dir)
        return
    saved_identity = run_dir / "identity.json"
    if saved_identity.is_file():
        diff = identity_diff(json.loads(saved_identity.read_text()), identity)
    elif saved is not None:             # an evaluation from before identity.json, or another task's run
        def config_identity(c):
            return {**_eval_config_identity(c), "checkpoint": c.get("checkpoint")}
        diff = identity_diff(config_identity(saved), config_identity(as_dict(cfg)))
    else:
        return
    if diff:
        raise ConfigError(f"{run_dir} holds the evaluation of another checkpoint or config "
                          f"({'; '.join(diff[:3])}); choose another run_name=... or remove that directory")


def holds_training(run_dir: Path) -> bool:
    """Whether a run dir holds anything a new config could destroy: a checkpoint or a finished summary."""
    return any((run_dir / p).is_file() for p in ("summary.json", "checkpoints/last.pt", "checkpoints/best.pt"))


def prepare_run_dir(cfg: DictConfig, run_dir: Path, device: torch.device, identity: dict | None = None) -> dict:
    """Record config + provenance (+ an evaluation's identity) in a run dir checked by :func:`check_run_dir`."""
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed)
    io.write_text(OmegaConf.to_yaml(as_dict(cfg)), run_dir / "config.yaml")
    io.write_json(prov, run_dir / "provenance.json")
    if identity is not None:
        io.write_json(identity, run_dir / "identity.json")
    return prov


def finished_summary(cfg: DictConfig, run_dir: Path, data: DataBundle | None = None) -> dict | None:
    """The saved summary of a finished training run of this config (its checkpoint's identity checked),
    or None: not finished, other eval_splits asked for, or ``trainer.resume=false`` (train again)."""
    summary_path, last = run_dir / "summary.json", run_dir / "checkpoints" / "last.pt"
    if not (cfg.trainer.resume and summary_path.is_file() and last.is_file()):
        return None
    ckpt = load_checkpoint(last)
    check_identity(checkpoint_identity(ckpt, saved_config(run_dir)), as_dict(cfg), run_dir)
    if data is not None:
        check_data_fingerprint(ckpt, data, run_dir)
    saved = json.loads(summary_path.read_text())
    # finished: every epoch ran, or the schedule stopped it early at the checkpoint's epoch
    stopped_early = saved.get("stopped_early") and saved.get("epochs") == ckpt["epoch"]
    if (ckpt["epoch"] != cfg.trainer.epochs and not stopped_early) or \
            not set(cfg.eval_splits) <= set(saved.get("eval") or {}):
        return None
    saved.pop("provenance", None)
    return saved


def write_eval(results: dict, out_dir: Path) -> dict:
    metrics = {}
    for split, (m, df) in results.items():
        io.write_predictions(df, out_dir / f"predictions_{split}.csv.gz")
        metrics[split] = m
    io.write_json(metrics, out_dir / "metrics.json")
    return metrics


def _locked(ctx: Context, run_dir: Path, what: str):
    """The run dir's lock on the main process (the only one that writes); nothing on the others."""
    return io.dir_lock(run_dir, what) if ctx.dist.is_main else nullcontext()


def _reused(ctx: Context, run_dir: Path, data: DataBundle) -> dict | None:
    done = finished_summary(ctx.cfg, run_dir, data)
    if done is not None and ctx.dist.is_main:
        print(f"reusing the finished run {run_dir}", flush=True)
    return done


# ---------------------------------------------------------------- the library's tasks
def fit_run(ctx: Context) -> dict:
    """Train ``cfg.model`` into ``cfg.run_dir`` (resuming it, or returning a finished run's saved
    summary), then evaluate ``best.pt`` on ``eval_splits``; returns the run's summary (also written
    to ``summary.json``).

    Everything that can be checked is checked before the run dir is touched: the config (the runner),
    the data (built here), the model (built and run on one image). The run dir is then locked, cleared
    of temp files left by a killed write, and refused if it holds a run of another config."""
    cfg = ctx.cfg
    if cfg.trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs: must be >= 1 for training, got {cfg.trainer.epochs}")
    resolve_precision(cfg.trainer.precision, ctx.device)      # e.g. fp16 on a CPU: refused before writing
    data = ctx.data
    if data.num_classes < 2:
        raise DataError(f"data={data.info.get('name', '?')} has {data.num_classes} class(es) "
                        f"({', '.join(map(str, data.classes))}): a classifier needs at least 2")
    check_splits(data, ["train", "val", *cfg.eval_splits])
    validate_model(cfg, data)
    run_dir = Path(cfg.run_dir)
    if (run_dir / "summary.json").is_file() and not os.access(run_dir, os.W_OK):
        # a read-only run dir (a shared, finished run): reusing it needs no lock
        check_run_dir(cfg, run_dir)
        done = _reused(ctx, run_dir, data)
        if done is not None:
            return done
    check_writable(run_dir, "run_dir")      # a read-only runs folder: refused before the lock creates anything
    with _locked(ctx, run_dir, "training run"):
        if ctx.dist.is_main:
            io.remove_orphaned_temps(run_dir)
            check_run_dir(cfg, run_dir)
        done = _reused(ctx, run_dir, data)
        if done is not None:
            return done
        if ctx.dist.is_main:   # the run changes from here: it is no longer finished until summary.json is rewritten
            for stale in ("summary.json", "eval/metrics.json"):
                (run_dir / stale).unlink(missing_ok=True)
        prov = prepare_run_dir(cfg, run_dir, ctx.device) if ctx.dist.is_main else {}
        if ctx.dist.is_main:
            print(f"training {cfg.model.tag} on {cfg.data.name} ({cfg.trainer.epochs} epochs, seed {cfg.seed}) -> "
                  f"{run_dir}", flush=True)
        try:
            summary = fit(as_dict(cfg), data, run_dir, ctx.device, ctx.dist)
        except KeyboardInterrupt:   # Ctrl-C, or SIGTERM (the runner turns it into this)
            metrics = run_dir / "metrics.json"
            done = len(json.loads(metrics.read_text())) if metrics.is_file() else 0
            raise Interrupted(f"interrupted while training {run_dir} after {done}/{cfg.trainer.epochs} epochs; "
                              "run the same command again to resume from there") from None
        model, _ = load_run(run_dir / "checkpoints" / "best.pt")
        results = evaluate_model(model, data, list(cfg.eval_splits), as_dict(cfg), ctx.device, ctx.dist)
        if ctx.dist.is_main:
            summary["eval"] = write_eval(results, run_dir / "eval")
            summary["data"] = data.info
            summary["bad_images"] = bad_image_counts(data)
            io.write_json({"provenance": prov, **summary}, run_dir / "summary.json")
    return summary


def train(ctx: Context) -> Result:
    """The ``train`` task: :func:`fit_run`; its files are the run dir's, the Result is the log line."""
    cfg = ctx.cfg
    s = fit_run(ctx)
    ev = " ".join(f"{split} {m['top1']:.3f}/{m['top5']:.3f}" for split, m in s.get("eval", {}).items())
    return Result(summary=f"{cfg.model.tag} on {cfg.data.name}: best val top-1 {s['best_val_top1']:.3f}; "
                          f"top-1/top-5 {ev}; training took {s['train_wall_s'] / 60:.1f} min ({s['precision']})")


def evaluate(ctx: Context) -> Result:
    """Top-1/top-5 and per-image predictions of ``checkpoint=`` (or a pretrained model) -> the run dir,
    which must be new or hold an evaluation with the same :func:`eval_identity`."""
    cfg = ctx.cfg
    model = ctx.model(cfg.model.tag)        # data, checkpoint (safely loaded), classes: nothing written yet
    resolve_precision(cfg.trainer.precision, ctx.device)
    check_splits(ctx.data, cfg.eval_splits)
    validate_model(cfg, ctx.data, model)
    identity = eval_identity(cfg)
    run_dir = Path(cfg.run_dir)
    check_writable(run_dir, "run_dir")
    metrics = {}
    with _locked(ctx, run_dir, "evaluation"):
        prov = {}
        if ctx.dist.is_main:
            io.remove_orphaned_temps(run_dir)
            check_run_dir(cfg, run_dir, identity)
            prov = prepare_run_dir(cfg, run_dir, ctx.device, identity)
        results = evaluate_model(model, ctx.data, list(cfg.eval_splits), as_dict(cfg), ctx.device, ctx.dist)
        if ctx.dist.is_main:
            metrics = write_eval(results, run_dir)
            io.write_json({"provenance": prov, "metrics": metrics, "bad_images": bad_image_counts(ctx.data)},
                          run_dir / "summary.json")
    return Result(summary="; ".join(f"{s} top-1 {m['top1']:.4f} top-5 {m['top5']:.4f} (n={m['n']})"
                                    for s, m in metrics.items()))
