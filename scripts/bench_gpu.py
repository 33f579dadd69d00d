#!/usr/bin/env python
"""The GPU profile (`make bench-gpu`): CUDA training and inference img/s of BagNets and ResNet-50 at 224 px.

    python scripts/bench_gpu.py [--models bagnet9 bagnet17 bagnet33 resnet50] [--batches 64 128 256]
                                [--precisions fp32 tf32 bf16] [--compile-batch 128] [--repeats 5]

* channels_last throughout; fp32 (TF32 off), TF32 (matmul and cuDNN TF32 on), bf16 autocast.
* torch.compile on and off, side by side, at one batch (--compile-batch) in bf16 for BagNet-33 and
  ResNet-50 (compilation takes about a minute per model; its one-off cost is reported apart).
* A configuration that runs out of memory is reported as OOM, not dropped.
* Data loading from disk: --data-images random-texture JPEGs (500 x 375, 10 classes) written to a temporary
  ImageFolder and read back by the suite's own loader (decode, RandomResizedCrop 224, flip) with --workers
  processes; the verdict says whether it outruns the fastest training configuration measured.
* Every configuration is timed once per round, rounds interleaved; medians [min, max].

Writes results/bench/<machine>/gpu.md and .json in the format of the CPU benches (bagnet.bench).
Without CUDA it refuses, unless --allow-cpu (a smoke test of the script itself).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from bagnet import io
from bagnet.bench import fmt_spread, interleaved, load_average, machine_id, make_steps, spread, write_bench
from bagnet.data import build_data, build_loader
from bagnet.engine import tf32

DTYPES = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}


def guarded(fn, enabled_tf32: bool, oom: set, key: str):
    """Run ``fn`` under the TF32 setting; an out-of-memory marks ``key`` and is not raised again."""
    def call():
        if key in oom:
            return
        try:
            with tf32(enabled_tf32):
                fn()
        except torch.cuda.OutOfMemoryError:
            oom.add(key)
            torch.cuda.empty_cache()
    return call


def write_jpeg_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth random texture: JPEG-compresses like a photo (pure noise would decode unusually slowly).
        small = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return root


def loader_rate(root: Path, size: int, batch: int, workers: int, epochs: int = 2) -> float:
    data = build_data({"name": "imagefolder", "root": str(root), "image_size": size, "val_fraction": 0.1})
    loader = build_loader(data.train, batch, train=True, workers=workers)
    n, t0 = 0, None
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for x, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()      # from the first batch: worker start-up excluded
                continue
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["bagnet9", "bagnet17", "bagnet33", "resnet50"])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"], choices=list(DTYPES))
    ap.add_argument("--compile-batch", type=int, default=128, help="0: skip the torch.compile comparison")
    ap.add_argument("--compile-models", nargs="+", default=["bagnet33", "resnet50"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=int, default=None, help="BagNet width (default: full); for smoke tests")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--allow-cpu", action="store_true", help="run on CPU (smoke test of this script)")
    ap.add_argument("--out-root", default=None, help="default: results/bench")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.allow_cpu:
        raise SystemExit("bench_gpu: needs --device cuda (this machine has no CUDA device); "
                         "the CPU benches are `make bench`")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: CUDA is not available here; the CPU benches are `make bench`")
    torch._dynamo.config.cache_size_limit = 64   # one compiled graph per configuration
    load_before = load_average()
    print(f"machine {machine_id(device)}")

    configs, fns, mem, oom, compile_s = [], {}, {}, set(), {}
    plan = [(m, b, p, False) for m in args.models for b in args.batches for p in args.precisions]
    if args.compile_batch:
        plan += [(m, args.compile_batch, "bf16", c) for m in args.compile_models if m in args.models
                 for c in (False, True) if (m, args.compile_batch, "bf16", False) not in plan or c]
    for name, batch, prec, comp in plan:
        key = f"{name} b{batch} {prec}{' compile' if comp else ''}"
        t = time.perf_counter()
        try:
            with tf32(prec == "tf32"):
                train, infer, mem[key] = make_steps(name, args.size, DTYPES[prec], batch, device, args.width,
                                                    compile_model=comp)
                infer()
        except torch.cuda.OutOfMemoryError:
            oom.add(key)
            torch.cuda.empty_cache()
            train = infer = (lambda: None)
        if comp:
            compile_s[key] = time.perf_counter() - t
        configs.append((key, name, batch, prec, comp))
        fns[f"train {key}"] = guarded(train, prec == "tf32", oom, key)
        fns[f"infer {key}"] = guarded(infer, prec == "tf32", oom, key)
    times = interleaved(fns, args.repeats, device, warmup=False)

    rows, best_train = [], 0.0
    for key, name, batch, prec, comp in configs:
        if key in oom:
            rows.append({"model": name, "batch": batch, "precision": prec, "compile": comp,
                         "train img/s": "OOM", "inference img/s": "OOM", "peak GB": "OOM"})
            continue
        tr = spread([batch / t for t in times[f"train {key}"]])
        inf = spread([batch / t for t in times[f"infer {key}"]])
        best_train = max(best_train, tr["median"])
        rows.append({"model": name, "batch": batch, "precision": prec, "compile": comp,
                     "train img/s": fmt_spread(tr), "inference img/s": fmt_spread(inf),
                     "peak GB": round(mem[key] / 2**30, 2), "_train": tr})
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_folder(Path(tmp), args.data_images)
        data_rate = spread([loader_rate(root, args.size, max(args.batches), args.workers)
                            for _ in range(min(args.repeats, 3))])
    load_after = load_average()

    headline = {}
    for r in rows:
        if "_train" in r and not r["compile"] and r["batch"] == max(args.batches):
            headline[f"{r['model']} train img/s, batch {r['batch']} {r['precision']}"] = r["train img/s"]
    headline[f"loader img/s ({args.workers} workers, {args.size} px JPEG)"] = fmt_spread(data_rate)
    faster = data_rate["median"] >= best_train
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    md = (f"# GPU profile: CUDA img/s at {args.size} px, channels_last\n\n"
          f"{args.repeats} interleaved rounds, median [min, max]. fp32 = TF32 off. Command: `python scripts/bench_gpu.py`."
          f"\n\n- Data loading from disk ({args.data_images} JPEGs 500 x 375, {args.workers} workers, decode + "
          f"RandomResizedCrop + flip): {fmt_spread(data_rate)} img/s vs the fastest training configuration's "
          f"{best_train:.0f} img/s: loading is **{'not the bottleneck' if faster else 'THE BOTTLENECK'}** here.\n"
          + "".join(f"- torch.compile one-off cost, {k}: {v:.0f} s\n" for k, v in compile_s.items())
          + "\n" + io.to_markdown(table) + "\n")
    kwargs = {"out_root": args.out_root} if args.out_root else {}
    path = write_bench("gpu", md, {"headline": headline,
                                   "rows": [{k: v for k, v in r.items() if k != "_train"} for r in rows],
                                   "loader_img_s": data_rate, "compile_s": compile_s, "times_s": times},
                       device, vars(args), load=(load_before, load_after), **kwargs)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
