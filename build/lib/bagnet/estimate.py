"""How long a training run will take, from a few measured steps (printed before a pipeline trains)."""
from __future__ import annotations

import time
from typing import Mapping

import torch

from .data import DataBundle, build_loader
from .distributed import DistInfo
from .engine import resolve_precision
from .models import create_model
from .train import build_criterion, build_optimizer, use_channels_last


def estimate_train_seconds(cfg: Mapping, data: DataBundle, device: torch.device, steps: int = 2) -> dict:
    """Time ``steps`` optimizer steps of ``cfg``'s model on real training batches (after one warm-up step)
    and extrapolate to the whole run: epochs x steps per epoch, plus one pass over val per epoch at
    about a third of a training step's cost per image. Weights are thrown away; nothing is written."""
    t = cfg["trainer"]
    loader = build_loader(data.train, t["batch_size"], True, cfg["seed"], DistInfo(), 0, device)
    model = create_model(**cfg["model"], num_classes=data.num_classes).to(device)
    precision = resolve_precision(t["precision"], device)
    channels_last = use_channels_last(t["channels_last"], device, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion, optimizer = build_criterion(t), build_optimizer(model, t)
    batches = iter(loader)
    seconds = []
    for _ in range(steps + 1):
        try:
            images, labels = next(batches)
        except StopIteration:            # a tiny dataset: fewer batches than steps to time
            batches = iter(loader)
            images, labels = next(batches)
        images = images.to(device, memory_format=torch.channels_last) if channels_last else images.to(device)
        started = time.perf_counter()
        with precision.autocast(device):
            loss = criterion(model(images).float(), labels.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    per_step = sorted(seconds[1:])[len(seconds[1:]) // 2]
    steps_per_epoch = len(loader) if not t.get("max_steps_per_epoch") else min(len(loader), t["max_steps_per_epoch"])
    val_steps = len(data.val) / t["batch_size"] / 3
    return {"s_per_step": per_step, "steps_per_epoch": steps_per_epoch, "epochs": t["epochs"],
            "total_s": per_step * (steps_per_epoch + val_steps) * t["epochs"]}
