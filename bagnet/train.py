"""Training loop with atomic checkpoints, exact resume and DDP. Plain functions of a config mapping."""
from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import io
from .data import DataBundle
from .distributed import DistInfo, barrier
from .engine import (Precision, build_loader, evaluate, recalibrate_slow_bn, resolve_precision,
                     train_one_epoch)
from .models import create_model


class ConfigError(ValueError):
    """A config that cannot run; the runner prints it as one line."""


# ---------------------------------------------------------------- models
MODEL_META_KEYS = ("name", "tag")


def model_kwargs(model_cfg: Mapping) -> dict:
    return {k: v for k, v in dict(model_cfg).items() if k not in MODEL_META_KEYS}


def build_model(model_cfg: Mapping, num_classes: int) -> nn.Module:
    return create_model(model_cfg["name"], num_classes=num_classes, **model_kwargs(model_cfg))


def load_checkpoint_file(path: str | Path) -> dict:
    """A checkpoint file, or a run directory (its best, else last, checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                path = path / "checkpoints" / name
                break
        else:
            raise ConfigError(f"no checkpoint in run dir {path} (expected checkpoints/best.pt or last.pt)")
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise ConfigError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


def model_from_checkpoint(ckpt: dict | str | Path, model_cfg: Mapping | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint was trained as (or check ``model_cfg`` matches it) and load weights."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint_file(ckpt)
    spec = ckpt["model_spec"]
    if model_cfg is not None:
        want = {"name": model_cfg["name"], **model_kwargs(model_cfg)}
        want.pop("pretrained", None), want.pop("weights", None)
        have = {"name": spec["name"], **spec["kwargs"]}
        diff = {k: (have.get(k), want.get(k)) for k in set(want) | set(have)
                if k not in ("pretrained", "weights") and have.get(k) != want.get(k)}
        if diff:
            raise ConfigError("checkpoint is for " + _fmt_model(have) + " but the config asks for "
                              + _fmt_model(want) + f" (differs in {sorted(diff)}); pass model=... to match")
    kwargs = {k: v for k, v in spec["kwargs"].items() if k not in ("pretrained", "weights")}
    model = create_model(spec["name"], num_classes=spec["num_classes"], **kwargs)
    model.load_state_dict(ckpt["model"])
    return model, spec


def _fmt_model(d: dict) -> str:
    return d["name"] + "(" + ", ".join(f"{k}={v}" for k, v in sorted(d.items()) if k != "name") + ")"


# ---------------------------------------------------------------- optimisation
def build_optimizer(model: nn.Module, t: Mapping) -> torch.optim.Optimizer:
    # No weight decay on BN and biases (standard for ResNets).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"], nesterov=t["nesterov"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=t["lr"])
    raise ConfigError(f"unknown trainer.optimizer '{t['optimizer']}'; valid: sgd, adamw")


def build_scheduler(optimizer, t: Mapping, steps_per_epoch: int):
    """Per-step LambdaLR: linear warmup, then cosine to zero or step decay."""
    total = max(1, t["epochs"] * steps_per_epoch)
    warmup = int(t["warmup_epochs"] * steps_per_epoch)
    if t["schedule"] not in ("cosine", "step", "constant"):
        raise ConfigError(f"unknown trainer.schedule '{t['schedule']}'; valid: cosine, step, constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if t["schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if t["schedule"] == "step":
            return t["gamma"] ** ((step // steps_per_epoch) // t["step_size"])
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The parts of a config that define a training run; a resumed run must match them.
def run_identity(cfg: Mapping) -> dict:
    t = {k: v for k, v in dict(cfg["trainer"]).items()
         if k not in ("progress", "workers", "resume", "eval_splits", "max_steps_per_epoch")}
    d = {k: v for k, v in dict(cfg["data"]).items() if k not in ("root", "workers", "cache")}
    return {"model": dict(cfg["model"]), "data": d, "trainer": t, "seed": cfg["seed"]}


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix[:-1]}: {a} -> {b}"]


# ---------------------------------------------------------------- fit
def fit(cfg: Mapping, data: DataBundle, run_dir: str | Path, device: torch.device,
        dist_info: DistInfo = DistInfo(), provenance: dict | None = None) -> dict:
    """Train ``cfg.model`` on ``data``; checkpoints, metrics and eval predictions go to ``run_dir``.

    Returns a summary dict (best val top-1, final metrics, wall time). A run dir that already holds
    a finished run with the same identity is not retrained; one with another identity is an error.
    """
    t = cfg["trainer"]
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    seed_everything(cfg["seed"])

    model = build_model(cfg["model"], data.num_classes).to(device)
    precision = resolve_precision(t["precision"], device)
    channels_last = _channels_last(t["channels_last"], device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = build_loader(data.train, t["batch_size"], True, cfg["seed"], dist_info, t["workers"], device)
    val_loader = build_loader(data.val, t["eval_batch_size"], False, cfg["seed"], dist_info, t["workers"], device)
    steps_per_epoch = math.ceil(len(train_loader) / t["accum_steps"])
    if t.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, math.ceil(t["max_steps_per_epoch"] / t["accum_steps"]))
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if precision.dtype == torch.float16 else None

    identity = run_identity(cfg)
    start_epoch, best_acc, history = 0, -1.0, []
    if last_path.is_file() and t["resume"]:
        ckpt = load_checkpoint_file(last_path)
        diff = _diff(ckpt["identity"], identity)
        if diff:
            raise ConfigError(f"{run_dir} holds a run with another config ({'; '.join(diff[:3])}); "
                              "choose another run_name=... or remove that directory")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        start_epoch, best_acc, history = ckpt["epoch"], ckpt["best_acc"], ckpt["history"]
        if dist_info.is_main:
            print(f"resuming {run_dir} from epoch {start_epoch}/{t['epochs']}", flush=True)

    train_model = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t["compile"]:
        train_model = _compile(train_model, device, model)

    spec = {"name": cfg["model"]["name"], "kwargs": model_kwargs(cfg["model"]),
            "num_classes": data.num_classes, "classes": list(data.classes),
            "mean": list(data.mean), "std": list(data.std), "image_size": data.image_size}
    started = time.perf_counter()
    for epoch in range(start_epoch, t["epochs"]):
        t0 = time.perf_counter()
        metrics = train_one_epoch(train_model, train_loader, optimizer, scheduler, scaler, precision, device,
                                  epoch, t["label_smoothing"], t["accum_steps"], channels_last,
                                  t["progress"] and dist_info.is_main, t.get("max_steps_per_epoch"))
        recalibrate_slow_bn(model, train_loader, precision, device, epoch, t["bn_recalibrate_batches"],
                            channels_last)
        val, _ = evaluate(model, val_loader, precision, device, channels_last,
                          t["progress"] and dist_info.is_main, desc="val")
        metrics.update(epoch=epoch + 1, val_top1=val["top1"], val_top5=val["top5"],
                       lr=optimizer.param_groups[0]["lr"], epoch_s=time.perf_counter() - t0)
        history.append(metrics)
        is_best = val["top1"] > best_acc
        best_acc = max(best_acc, val["top1"])
        if dist_info.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "epoch": epoch + 1, "best_acc": best_acc, "history": history, "rng": _rng_state(),
                     "identity": identity, "model_spec": spec, "precision": precision.name}
            # best first: a kill between the two writes then loses nothing that last.pt would not redo.
            if is_best:
                io.save_checkpoint({**state, "rng": None}, ckpt_dir / "best.pt")
            io.save_checkpoint(state, last_path)
            io.write_table(pd.DataFrame(history), run_dir / "metrics")
            io.write_json(history, run_dir / "metrics.json")
            print(f"epoch {epoch + 1}/{t['epochs']}: loss {metrics['train_loss']:.3f} "
                  f"train {metrics['train_acc']:.3f} val {val['top1']:.3f} "
                  f"({metrics['train_images_per_s']:.0f} img/s, {metrics['epoch_s']:.0f}s)", flush=True)
        barrier()

    summary = {"epochs": t["epochs"], "best_val_top1": best_acc, "train_wall_s": time.perf_counter() - started,
               "precision": precision.name, "channels_last": channels_last,
               "final": history[-1] if history else {}}
    return summary


def _channels_last(setting, device: torch.device, model: nn.Module) -> bool:
    """auto: on (on CPU in fp32: +3-9% training, +15-20% inference, results/bench/train.md), except on CPU
    for models with convolutions narrower than 16 channels: with those, torch 2.14.1's CPU channels_last
    kernels segfaulted intermittently here (BagNet width 8, fp32 and bf16); NCHW never did."""
    if setting != "auto":
        return bool(setting)
    return not _narrow_on_cpu(device, model)


def _narrow_on_cpu(device: torch.device, model: nn.Module) -> bool:
    return device.type == "cpu" and any(m.out_channels < 16 for m in model.modules() if isinstance(m, nn.Conv2d))


def _compile(train_model: nn.Module, device: torch.device, model: nn.Module) -> nn.Module:
    """torch.compile; for narrow nets on CPU without inductor's switch to channels_last, which hits the
    same torch 2.14.1 NHWC crash as `_channels_last` avoids (segfault in convolution_backward, width 4)."""
    options = {"layout_optimization": False} if _narrow_on_cpu(device, model) else None
    return torch.compile(train_model, options=options)


def evaluate_checkpoint(model: nn.Module, data: DataBundle, splits: list[str], cfg: Mapping,
                        device: torch.device, dist_info: DistInfo = DistInfo(),
                        transform=None, suffix: str = "") -> dict[str, tuple[dict, pd.DataFrame]]:
    """Top-1/top-5 and per-image predictions of ``model`` on each split (paths attached)."""
    t = cfg["trainer"]
    precision: Precision = resolve_precision(t["precision"], device)
    channels_last = _channels_last(t["channels_last"], device, model)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = {}
    for split in splits:
        ds = data.split(split)
        loader = build_loader(ds, t["eval_batch_size"], False, cfg["seed"], dist_info, t["workers"], device)
        metrics, df = evaluate(model, loader, precision, device, channels_last,
                               t["progress"] and dist_info.is_main, desc=f"{split}{suffix}",
                               transform=transform)
        samples = getattr(ds, "samples", None)
        if samples is not None:
            df.insert(1, "path", [str(samples[i][0]) for i in df["index"]])
        out[split] = (metrics, df)
    return out
