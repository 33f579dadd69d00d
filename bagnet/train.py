"""Training: ``fit`` a model config on a DataBundle, with atomic checkpoints, exact resume and DDP.

Reads top to bottom like torchvision's references/classification/train.py: data loaders, model,
criterion, optimizer, lr schedule (torch's schedulers), resume, the epoch loop (train, validate,
checkpoint). The run directory's identity (the config keys that change the result) is checked once,
against the checkpoint being resumed.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
import torch.nn as nn
from torch.optim import lr_scheduler

from . import io
from .checkpoint import load_checkpoint, model_kwargs, rng_state, set_rng_state
from .data import DataBundle, build_loader
from .data.loader import capped
from .distributed import DistInfo, barrier
from .engine import evaluate, recalibrate_slow_bn, resolve_precision, train_one_epoch
from .errors import ConfigError
from .identity import IDENTITY_VERSION, check_identity, checkpoint_identity, run_identity
from .loggers import RunLog, heatmap_figure
from .models import create_model
from .seeding import seed_everything
from .utils import has_narrow_convs_on_cpu


# ---------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, t: Mapping) -> torch.optim.Optimizer:
    """sgd / adamw: no weight decay on BN and biases (standard for ResNets). adam: the COMP6248 notebooks'
    ``optim.Adam(model.parameters(), lr=...)``: one group of all parameters, torch's defaults otherwise
    (``trainer.weight_decay`` is passed as Adam's coupled L2 term; the report's protocol sets 0).
    ``fused_optimizer``: torch's fused Adam/AdamW kernel, the same update rule in one pass over the
    parameters (on CPU about 9x faster than the per-tensor loop for VGG-16's 134M parameters)."""
    fused = {"fused": True} if t.get("fused_optimizer") else {}
    if t["optimizer"] == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t["lr"],
                                weight_decay=t["weight_decay"], **fused)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"], nesterov=t["nesterov"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=t["lr"], **fused)
    raise ConfigError(f"unknown trainer.optimizer '{t['optimizer']}'; valid: sgd, adamw, adam")


class PlateauHalving:
    """The COMP6248 notebooks' per-epoch schedule, driven by validation accuracy (docs/report_protocol.md)::

        if val_acc >= best: best = val_acc; save best; patiance = 0
        else:               tolerate += 1; patiance += 1
        if tolerate >= 3:   lr /= 2; optimizer = Adam(params, lr); tolerate = 0
        if patiance > 15:   break

    i.e. ties are a new best; the lr is multiplied by ``factor`` after every ``patience``-th epoch without a
    new best *counted since the last decay* (a new best does not reset that count); with
    ``restart_optimizer`` a decay also clears the optimizer's state (the notebook builds a new Adam:
    moments and step count start again); training stops after ``early_stop`` consecutive epochs without
    a new best. torch's ReduceLROnPlateau cannot express this (it resets its count on a new best and
    needs a strict improvement), hence this class. Its ``state_dict`` holds plain numbers (checkpoints
    load with ``weights_only=True``); the lr itself lives in the optimizer's state dict.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, patience: int = 3, early_stop: int = 16,
                 factor: float = 0.5, restart_optimizer: bool = True):
        self.optimizer, self.patience, self.early_stop = optimizer, patience, early_stop
        self.factor, self.restart_optimizer = factor, restart_optimizer
        self.best, self.tolerate, self.since_best, self.epochs, self.decays = float("-inf"), 0, 0, 0, 0
        self.stop_epoch: int | None = None

    @property
    def should_stop(self) -> bool:
        return self.stop_epoch is not None

    def step(self, metric: float) -> bool:
        """Record one epoch's validation accuracy; returns whether it is a new best (``>=``). Decays the lr
        of every param group for the next epoch when due, and sets ``stop_epoch`` when training must stop."""
        self.epochs += 1
        is_best = metric >= self.best
        if is_best:
            self.best, self.since_best = metric, 0
        else:
            self.tolerate += 1
            self.since_best += 1
        if self.tolerate >= self.patience:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor
            if self.restart_optimizer:
                self.optimizer.state.clear()
            self.tolerate, self.decays = 0, self.decays + 1
        if self.since_best >= self.early_stop:
            self.stop_epoch = self.epochs
        return is_best

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"best": self.best, "tolerate": self.tolerate, "since_best": self.since_best, "epochs": self.epochs,
                "decays": self.decays, "stop_epoch": self.stop_epoch, "patience": self.patience,
                "early_stop": self.early_stop, "factor": self.factor, "restart_optimizer": self.restart_optimizer}

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("best", "tolerate", "since_best", "epochs", "decays", "stop_epoch"):
            setattr(self, key, state[key])


def build_scheduler(optimizer: torch.optim.Optimizer, t: Mapping, steps_per_epoch: int):
    """Per-step schedule: linear warmup over ``warmup_epochs``, then cosine to zero, step decay or constant.
    ``plateau_halving``: the per-epoch :class:`PlateauHalving` (no warmup)."""
    if t["schedule"] == "plateau_halving":
        return PlateauHalving(optimizer, t["patience"], t["early_stop"], t["factor"], t["restart_optimizer"])
    total = max(1, t["epochs"] * steps_per_epoch)
    warmup = int(t["warmup_epochs"] * steps_per_epoch)
    if t["schedule"] == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif t["schedule"] == "step":
        # decay every step_size epochs, counted from the start of training (warmup included)
        main = lr_scheduler.LambdaLR(optimizer, lambda s: t["gamma"] ** (((s + warmup) // steps_per_epoch)
                                                                         // t["step_size"]))
    elif t["schedule"] == "constant":
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ConfigError(f"unknown trainer.schedule '{t['schedule']}'; valid: cosine, step, constant, "
                          "plateau_halving")
    if warmup == 0:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def build_criterion(t: Mapping) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])


def check_data_fingerprint(ckpt: Mapping, data: DataBundle, run_dir: Path) -> None:
    """The files under data.root must be those the run started on (checkpoints from before the fingerprint
    carry none and are not checked)."""
    saved, now = ckpt.get("data_fingerprint"), data.fingerprint()
    if saved and now and saved != now:
        raise ConfigError(f"{run_dir} was trained on other files under data.root={ckpt['identity']['data'].get('root')} "
                          "(images were added, removed or moved since); train into another run_name=... or restore "
                          "the data")


# ---------------------------------------------------------------- fit
def fit(cfg: Mapping, data: DataBundle, run_dir: str | Path, device: torch.device,
        dist_info: DistInfo = DistInfo()) -> dict:
    """Train ``cfg['model']`` on ``data``; checkpoints and per-epoch metrics go to ``run_dir``.

    Resumes from ``run_dir/checkpoints/last.pt`` when it exists (and ``trainer.resume``); returns a
    summary (epochs, best val top-1, wall time, precision).
    """
    t, run_dir = cfg["trainer"], Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    seed_everything(cfg["seed"])

    train_loader = build_loader(data.train, t["batch_size"], True, cfg["seed"], dist_info, t["workers"], device)
    val_loader = build_loader(capped(data.val, t.get("max_eval_images"), cfg["seed"]), t["eval_batch_size"], False,
                              cfg["seed"], dist_info, t["workers"], device)
    steps_per_epoch = math.ceil(len(train_loader) / t["accum_steps"])
    if t.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, math.ceil(t["max_steps_per_epoch"] / t["accum_steps"]))

    model = create_model(**cfg["model"], num_classes=data.num_classes).to(device)
    precision = resolve_precision(t["precision"], device)
    channels_last = use_channels_last(t["channels_last"], device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(t)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch)
    per_epoch = isinstance(scheduler, PlateauHalving)   # steps on val accuracy after each epoch, not per step
    scaler = torch.amp.GradScaler("cuda") if precision.dtype == torch.float16 else None

    start_epoch, best_acc, history, wall_before, step = 0, -1.0, [], 0.0, 0
    if last_path.is_file() and t["resume"]:
        ckpt = load_checkpoint(last_path)
        check_identity(checkpoint_identity(ckpt, saved_config(run_dir)), cfg, run_dir)
        check_data_fingerprint(ckpt, data, run_dir)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best_acc, history = ckpt["epoch"], ckpt["best_acc"], ckpt["history"]
        step = ckpt.get("global_step", start_epoch * steps_per_epoch)   # optimizer steps so far: the loggers' axis
        wall_before = ckpt.get("train_wall_s", sum(h.get("epoch_s", 0.0) for h in history)) + lost_s(run_dir)
        (run_dir / LOST_FILE).unlink(missing_ok=True)   # now inside wall_before, saved with the next checkpoint
        if dist_info.is_main:
            print(f"resuming {run_dir} from epoch {start_epoch}/{t['epochs']}", flush=True)

    train_model = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t["compile"]:
        train_model = compile_model(train_model, device, model)

    spec = {"name": cfg["model"]["name"], "kwargs": model_kwargs(cfg["model"]),
            "num_classes": data.num_classes, "classes": list(data.classes),
            "mean": list(data.mean), "std": list(data.std), "image_size": data.image_size}
    progress = t["progress"] and dist_info.is_main
    fingerprint = data.fingerprint()
    log = RunLog.open(cfg.get("logger"), run_dir, step, t.get("log_every_n_steps", 1), dist_info.is_main)
    log.log_config(cfg)
    started = epoch_started = time.perf_counter()
    try:
        for epoch in range(start_epoch, t["epochs"]):
            if per_epoch and scheduler.should_stop:   # a resumed run that had already stopped early
                break
            t0 = epoch_started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            metrics = train_one_epoch(train_model, criterion, train_loader, optimizer, None if per_epoch else scheduler,
                                      scaler, precision,
                                      device, epoch, t["accum_steps"], channels_last, progress,
                                      t.get("max_steps_per_epoch"), log.on_step)
            recalibrate_slow_bn(model, train_loader, precision, device, epoch, t["bn_recalibrate_batches"],
                                channels_last)
            val, _ = evaluate(model, val_loader, precision, device, channels_last, progress, desc="val")
            metrics.update(epoch=epoch + 1, val_top1=val["top1"], val_top5=val["top5"],
                           lr=lr if per_epoch else optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - t0)
            history.append(metrics)
            log.epoch(metrics)
            # plateau_halving: ties are a new best (the notebook's >=, the last epoch reaching the best is kept)
            is_best = scheduler.step(val["top1"]) if per_epoch else val["top1"] > best_acc
            best_acc = max(best_acc, val["top1"])
            if dist_info.is_main:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                         "epoch": epoch + 1, "best_acc": best_acc, "history": history, "rng": rng_state(),
                         "identity": run_identity(cfg), "identity_version": IDENTITY_VERSION,
                         "train_wall_s": wall_before + time.perf_counter() - started, "global_step": log.step,
                         "model_spec": spec, "precision": precision.name, "data_fingerprint": fingerprint}
                # best first: a kill between the two writes then loses nothing that last.pt would not redo.
                if is_best:
                    io.save_checkpoint({**state, "rng": None}, ckpt_dir / "best.pt")
                io.save_checkpoint(state, last_path)
                io.write_table(pd.DataFrame(history), run_dir / "metrics")
                io.write_json(history, run_dir / "metrics.json")
                log.commit()    # W&B / MLflow get the epoch's points once its checkpoint holds them
                print(f"epoch {epoch + 1}/{t['epochs']}: loss {metrics['train_loss']:.3f} "
                      f"train {metrics['train_acc']:.3f} val {val['top1']:.3f} "
                      f"({metrics['train_images_per_s']:.0f} img/s, {metrics['epoch_s']:.0f}s)", flush=True)
            barrier()
            if per_epoch and scheduler.should_stop:
                if dist_info.is_main:
                    print(f"early stop after epoch {epoch + 1}: {t['early_stop']} epochs without a new best val "
                          f"top-1 ({best_acc:.3f})", flush=True)
                break

        if log.wants_figures and len(history) > start_epoch:   # a BagNet's heatmaps, once per finished training
            log.figure("heatmaps", heatmap_figure, model, data.val, data.classes, data.mean, data.std)
    except KeyboardInterrupt:   # the unfinished epoch's time counts too, once the run resumes
        if dist_info.is_main:
            io.write_json({"lost_s": lost_s(run_dir) + time.perf_counter() - epoch_started}, run_dir / LOST_FILE)
        log.close(ok=False)
        raise
    except BaseException:
        log.close(ok=False)
        raise
    log.close()

    stop = scheduler.stop_epoch if per_epoch else None
    # train_wall_s: over every process that worked on the run (a resumed run counts its earlier ones)
    return {"epochs": len(history), "max_epochs": t["epochs"], "stopped_early": stop is not None,
            "stop_epoch": stop, "lr_decays": scheduler.decays if per_epoch else None, "best_val_top1": best_acc,
            "train_wall_s": wall_before + time.perf_counter() - started,
            "precision": precision.name, "channels_last": channels_last,
            "final": history[-1] if history else {}}


LOST_FILE = "interrupted_s.json"   # time of epochs interrupted by Ctrl-C / SIGTERM, not yet in a checkpoint


def lost_s(run_dir: Path) -> float:
    """Seconds spent in interrupted epochs since the last checkpoint (a kill -9 leaves no record)."""
    path = Path(run_dir) / LOST_FILE
    return float(json.loads(path.read_text())["lost_s"]) if path.is_file() else 0.0


def saved_config(run_dir: Path) -> dict | None:
    """The config a run dir was last started with (its config.yaml), or None."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def use_channels_last(setting, device: torch.device, model: nn.Module) -> bool:
    """auto: on (measured on a 2-core AVX2 EPYC in fp32: +3-9% training, +15-20% inference; in git history,
    results/bench/train.md of 2026-11-23), except for
    narrow nets on CPU (:func:`bagnet.utils.has_narrow_convs_on_cpu`)."""
    if setting != "auto":
        return bool(setting)
    return not has_narrow_convs_on_cpu(device, model)


def compile_model(train_model: nn.Module, device: torch.device, model: nn.Module) -> nn.Module:
    """torch.compile; for narrow nets on CPU without inductor's switch to channels_last (the same crash)."""
    options = {"layout_optimization": False} if has_narrow_convs_on_cpu(device, model) else None
    return torch.compile(train_model, options=options)


def evaluate_model(model: nn.Module, data: DataBundle, splits: list[str], cfg: Mapping, device: torch.device,
                   dist_info: DistInfo = DistInfo(), transform=None,
                   suffix: str = "") -> dict[str, tuple[dict, pd.DataFrame]]:
    """Top-1/top-5 and per-image predictions (with image paths) of ``model`` on each split.

    ``transform(images, indices)`` optionally alters each batch first (e.g. scrambling)."""
    t = cfg["trainer"]
    precision = resolve_precision(t["precision"], device)
    channels_last = use_channels_last(t["channels_last"], device, model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = {}
    for split in splits:
        ds = capped(data.split(split), t.get("max_eval_images"), cfg["seed"])
        loader = build_loader(ds, t["eval_batch_size"], False, cfg["seed"], dist_info, t["workers"], device)
        metrics, df = evaluate(model, loader, precision, device, channels_last,
                               t["progress"] and dist_info.is_main, desc=f"{split}{suffix}", transform=transform)
        samples = getattr(ds, "samples", None)
        if samples is not None:
            df.insert(1, "path", [str(samples[i][0]) for i in df["index"]])
        out[split] = (metrics, df)
    return out

