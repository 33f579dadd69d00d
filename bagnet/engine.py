"""Plain training and evaluation functions (in the manner of torchvision's references/classification):
precision, ``train_one_epoch``, ``evaluate`` / ``predict``, and the slow-BN recalibration. Loaders come
from :mod:`bagnet.data.loader`."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data.loader import EpochSampler
from .distributed import all_gather_objects, all_reduce_sum
from .errors import ConfigError, TrainingDiverged


# ---------------------------------------------------------------- precision
@dataclass
class Precision:
    """Autocast settings: bf16 on CPUs that have fast bf16, bf16/fp16 on CUDA, else fp32."""
    dtype: torch.dtype | None  # None = fp32

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 kernels for CUDA matmuls and cuDNN convolutions on or off inside the block, the caller's setting
    restored after (the one switch: the precision experiment, the paper pipeline's guard, the GPU bench)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def numerics_state() -> dict:
    """The TF32 switches (legacy flags, which the run sets) and, where this torch has them, the newer
    per-backend fp32 precision settings they map to."""
    state = {"cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
             "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    for name, obj in (("cuda_matmul_fp32_precision", torch.backends.cuda.matmul),
                      ("cudnn_conv_fp32_precision", getattr(torch.backends.cudnn, "conv", None))):
        try:
            state[name] = str(obj.fp32_precision)
        except (AttributeError, RuntimeError):
            pass
    return state


class Tf32Guard:
    """Forward pre-hook: refuses a forward with TF32 on, counts the forwards it saw. Copies of a hooked
    model (deepcopy for attribution) share the guard."""

    def __init__(self):
        self.forwards = 0

    def __call__(self, module, args):
        s = numerics_state()
        if s["cuda_matmul_allow_tf32"] or s["cudnn_allow_tf32"]:
            raise RuntimeError(f"TF32 is on during a forward of {type(module).__name__}: {s}")
        self.forwards += 1

    def __deepcopy__(self, memo):
        return self


def cpu_has_fast_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def keep_freed_cpu_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS; returns whether it applied.

    By default glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
    mmap and unmaps it on free, so each training step page-faults, and the kernel zero-fills, every
    page of every large activation and gradient again. A BagNet-33 step at 224 px, batch 8, allocates
    several GB of them: this alone took BagNet-33 from 2.3 to 3.0-3.5 training img/s on a 2-core EPYC
    (ResNet-50, with 4x smaller activations, unchanged). Results are unaffected; the process keeps its
    peak memory until it exits. No-op off glibc (macOS, musl, Windows).
    """
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    # mallopt's value is an int; glibc stores the trim threshold as size_t, so -1 means "never trim".
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))


def resolve_precision(name: str, device: torch.device) -> Precision:
    name = name.lower()
    valid = ("auto", "fp32", "bf16", "fp16")
    if name not in valid:
        raise ConfigError(f"unknown trainer.precision '{name}'; valid: {', '.join(valid)}")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    return Precision({"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=cpu")
    return torch.device(name)


# ---------------------------------------------------------------- train / evaluate
def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler | None, precision: Precision, device: torch.device,
                    epoch: int, accum_steps: int = 1, channels_last: bool = False, progress: bool = True,
                    max_steps: int | None = None, on_step=None) -> dict:
    """One pass over ``loader``; ``scheduler`` (if any) steps once per optimizer step. ``on_step`` (the run's
    loggers, :meth:`bagnet.loggers.RunLog.on_step`) gets after each optimizer step its loss and top-1 (this
    process's micro-batches), the lr it used and the epoch's images/s so far."""
    model.train()
    loader.sampler.set_epoch(epoch)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    group = torch.zeros(3, dtype=torch.float64)   # the same over the current optimizer step's micro-batches
    start, seen = time.perf_counter(), 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True,
               total=len(loader) if max_steps is None else min(len(loader), max_steps))
    optimizer.zero_grad(set_to_none=True)
    last = len(loader) if max_steps is None else min(len(loader), max_steps)   # the epoch's final micro-batch
    for step, (images, labels) in enumerate(bar):
        if step >= last:
            break
        images, labels = _to(images, device, channels_last), labels.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = model(images)
            loss = criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training diverged: the loss is {loss.item()} at epoch {epoch + 1} step {step + 1} "
                                   f"(lr {optimizer.param_groups[0]['lr']:.3g}); the checkpoints of earlier epochs are "
                                   "kept; lower trainer.lr or use trainer.precision=fp32")
        (scaler.scale(loss / accum_steps) if scaler else loss / accum_steps).backward()
        # a partial last group still steps (else accum_steps > steps per epoch would never update the weights)
        stepped, lr = (step + 1) % accum_steps == 0 or step + 1 == last, optimizer.param_groups[0]["lr"]
        if stepped:
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        n = labels.numel()
        batch = torch.tensor([loss.item() * n, (logits.argmax(1) == labels).sum().item(), n], dtype=torch.float64)
        totals += batch
        group += batch
        seen += n
        if stepped and on_step is not None:
            on_step({"loss": float(group[0] / group[2]), "top1": float(group[1] / group[2]), "lr": lr,
                     "img_per_s": seen / (time.perf_counter() - start)})
        if stepped:
            group.zero_()
        if progress:
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    loss_sum, correct, count = all_reduce_sum(totals.tolist(), device)
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "train_images_per_s": seen / (time.perf_counter() - start)}


@torch.no_grad()
def recalibrate_slow_bn(model: nn.Module, loader: DataLoader, precision: Precision, device: torch.device,
                        epoch: int, batches: int, channels_last: bool = False, slow: float = 0.01) -> int:
    """Re-estimate the running statistics of BatchNorm layers with a tiny momentum.

    The BagNet stem's BN uses momentum 0.001 (as in the authors' release, tuned for long ImageNet
    runs): after a few hundred steps its running stats are still mostly their initial values and
    eval-mode accuracy is meaningless. This replaces them by the exact average over ``batches``
    training batches (other BN layers are left alone). Returns the number of layers recalibrated.
    """
    slow_bns = [m for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is not None and m.momentum < slow]
    if not slow_bns or batches <= 0:
        return 0
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in slow_bns]
    for m in slow_bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    # Layers after the last slow BN cannot change its statistics: stop each forward there (for a BagNet
    # the slow BN is in the stem, so this skips almost all of the network).
    seen: set[int] = set()

    def stop_when_all_seen(module, inputs, output):
        seen.add(id(module))
        if len(seen) == len(slow_bns):
            raise _StopForward

    hooks = [m.register_forward_hook(stop_when_all_seen) for m in slow_bns]
    try:
        loader.sampler.set_epoch(epoch)
        for step, (images, _) in enumerate(loader):
            if step >= batches:
                break
            seen.clear()
            with precision.autocast(device):
                try:
                    model(_to(images, device, channels_last))
                except _StopForward:
                    pass
    finally:
        for h in hooks:
            h.remove()
    for m, mom in zip(slow_bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return len(slow_bns)


class _StopForward(Exception):
    """Raised by a forward hook to end a forward pass early."""


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, precision: Precision, device: torch.device,
            channels_last: bool = False, progress: bool = True, desc: str = "eval",
            transform=None) -> pd.DataFrame:
    """Per-image predictions (this rank's shard): index, label, pred, top5_0..4, true_logit.

    ``transform(images, indices)`` optionally alters a batch before the forward (e.g. scrambling).
    """
    model.eval()
    rows = []
    sampler_idx = iter(loader.sampler.indices()) if isinstance(loader.sampler, EpochSampler) else None
    offset = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        n = labels.numel()
        idx = [next(sampler_idx) for _ in range(n)] if sampler_idx else list(range(offset, offset + n))
        offset += n
        if transform is not None:
            images = transform(images, idx)
        images = _to(images, device, channels_last)
        with precision.autocast(device):
            logits = model(images).float().cpu()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        rows.append(pd.DataFrame({
            "index": idx, "label": labels.tolist(), "pred": top[:, 0].tolist(),
            **{f"top5_{j}": top[:, j].tolist() for j in range(k)},
            "true_logit": logits.gather(1, labels[:, None]).squeeze(1).tolist()}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def accuracy_from_predictions(df: pd.DataFrame) -> dict:
    top5_cols = [c for c in df.columns if c.startswith("top5_")]
    top1 = (df["pred"] == df["label"]).mean()
    top5 = df[top5_cols].eq(df["label"], axis=0).any(axis=1).mean()
    return {"top1": float(top1), "top5": float(top5), "n": int(len(df))}


def evaluate(model: nn.Module, loader: DataLoader, precision: Precision, device: torch.device,
             channels_last: bool = False, progress: bool = True, desc: str = "eval",
             transform=None) -> tuple[dict, pd.DataFrame]:
    """Top-1/top-5 over all ranks and the gathered per-image predictions (complete on every rank)."""
    df = predict(model, loader, precision, device, channels_last, progress, desc, transform)
    df = pd.concat([d for d in all_gather_objects(df) if len(d)], ignore_index=True)
    df = df.sort_values("index", kind="stable").reset_index(drop=True)
    return accuracy_from_predictions(df), df
