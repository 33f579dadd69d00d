"""The library's own tasks, train and eval, and the run directories they write: a run dir holds one run
(refused when it holds another), is reused when finished and resumed when interrupted, under its lock."""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import io
from .checks import bad_image_counts, check_splits, check_writable, validate_model
from .checkpoint import load_checkpoint, load_run
from .config import as_dict
from .context import Context
from .data import DataBundle, DataError
from .engine import resolve_precision
from .errors import ConfigError, Interrupted
from .identity import _eval_config_identity, eval_identity, check_identity, checkpoint_identity, identity_diff, run_identity
from .provenance import provenance
from .result import Result
from .train import check_data_fingerprint, evaluate_model, fit, saved_config


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
