#!/usr/bin/env python
"""How long does Gatys texture synthesis take per image? Times ``experiments.texture_synthesis.synthesize``.

    python scripts/bench_texture.py [--n 4] [--size 224] [--steps 100] [--device auto|cpu|cuda]
                                    [--weights random|imagenet] [--write]

Sources are smooth random images (no data set needed), ImageNet-normalised. ``--weights random`` (default)
needs no download: the cost of one evaluation does not depend on the weights, but the number of
line-search evaluations per L-BFGS step can, so both are reported. ``imagenet`` loads torchvision's
VGG-19 weights (from the torch hub cache, or a download). One untimed warm-up (2 steps, 1 image) first.
Prints images/s and s/image; with ``--write`` also writes results/bench/texture.md and .json.
At 224 px and Gatys' 2000 steps this is slow on a CPU: time a few steps and scale (s/step is reported).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.texture_synthesis import GATYS_LAYERS, GramExtractor, synthesize  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd")


def machine(device: torch.device) -> dict:
    """CPU model and the vector flags that matter for conv speed (as lscpu shows them), GPU name."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_flags": [], "threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                info["cpu"] = value.strip()
            elif key.strip() in ("flags", "Features"):
                info["cpu_flags"] = [f for f in FLAGS if f in value.split()]
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    return info


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random images with structure at several scales, in [0, 1], then ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    x = sum(F.interpolate(torch.rand(n, 3, size // s, size // s, generator=g), size=(size, size), mode="bilinear")
            for s in (4, 16, 32))
    x = (x - x.amin((1, 2, 3), keepdim=True)) / (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class Counted(nn.Module):
    """The extractor, counting forward passes (one per loss evaluation, plus one target per image)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="images to synthesise (timed)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=100, help="L-BFGS iterations per image (Gatys: 2000)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    ap.add_argument("--weights", choices=["random", "imagenet"], default="random")
    ap.add_argument("--write", action="store_true", help="write results/bench/texture.md and .json")
    ap.add_argument("--out", type=Path, default=ROOT / "results/bench")
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)

    torch.manual_seed(0)
    vgg = torchvision.models.vgg19(weights="IMAGENET1K_V1" if args.weights == "imagenet" else None)
    extractor = Counted(GramExtractor(vgg.features, GATYS_LAYERS).to(device))
    del vgg
    sources = smooth_images(args.n, args.size).to(device)
    kw = dict(mean=MEAN, std=STD, max_size=args.size)

    synthesize(sources[:1], extractor, 2, seed=0, **kw)  # warm-up: allocator, cuDNN algorithm choice
    extractor.calls = 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    _, history = synthesize(sources, extractor, args.steps, seed=0, **kw)
    sync()
    seconds = time.perf_counter() - t0

    row = {"n": args.n, "size": args.size, "steps": args.steps, "weights": args.weights,
           "layers": list(GATYS_LAYERS), "seconds": seconds, "s_per_image": seconds / args.n,
           "images_per_s": args.n / seconds, "s_per_step": seconds / (args.n * max(args.steps, 1)),
           "evals_per_step": (extractor.calls - args.n) / (args.n * max(args.steps, 1)),
           "loss_first": history[:, 0].mean().item(), "loss_last": history[:, -1].mean().item()}
    prov = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
            "device": str(device), "machine": machine(device), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "command": "python scripts/bench_texture.py " + " ".join(sys.argv[1:])}
    where = prov["machine"].get("gpu") or prov["machine"]["cpu"]
    print(f"{args.n} images, {args.size} px, {args.steps} steps on {device} ({where}): "
          f"{row['images_per_s']:.4g} images/s, {row['s_per_image']:.4g} s/image, "
          f"{row['s_per_step'] * 1e3:.4g} ms/step, {row['evals_per_step']:.3g} evaluations/step; "
          f"loss {row['loss_first']:.3g} -> {row['loss_last']:.3g}")
    if not args.write:
        return
    m = prov["machine"]
    md = (f"# Texture synthesis speed\n\nMeasured {prov['time']} on {device}: "
          f"{m.get('gpu', m['cpu'])} (CPU {m['cpu']}, flags {', '.join(m['cpu_flags']) or 'n/a'}, "
          f"{m['threads']} threads), torch {prov['torch']}, commit {prov['git_commit']}; command: "
          f"`{prov['command']}`. Gatys layers {', '.join(GATYS_LAYERS)}, average pooling, L-BFGS "
          f"(strong Wolfe, memory 20), VGG-19 weights: {args.weights}; smooth random source images. "
          f"Gatys' protocol runs 2000 steps: s/image there ~ 2000 x s/step.\n\n"
          "| images | px | steps | s/image | images/s | ms/step | evaluations/step | loss start -> end |\n"
          "|---|---|---|---|---|---|---|---|\n"
          f"| {args.n} | {args.size} | {args.steps} | {row['s_per_image']:.4g} | {row['images_per_s']:.4g} | "
          f"{row['s_per_step'] * 1e3:.4g} | {row['evals_per_step']:.3g} | "
          f"{row['loss_first']:.3g} -> {row['loss_last']:.3g} |\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "texture.md").write_text(md)
    (args.out / "texture.json").write_text(json.dumps({"provenance": prov, "args": {**vars(args), "out": str(args.out)},
                                                       "result": row}, indent=2) + "\n")
    print(f"wrote {args.out / 'texture.md'} and .json")


if __name__ == "__main__":
    main()
