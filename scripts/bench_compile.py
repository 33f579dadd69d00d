#!/usr/bin/env python
"""Eager vs `torch.compile` at the cpu profile, side by side in one run: is `trainer.compile` worth it?

    python scripts/bench_compile.py [--models bagnet33 resnet50] [--size 112] [--batch 32] [--steps 4]

fp32, channels_last, AdamW (the cpu profile's recipe). Reports the one-off compile cost (first step
minus a steady step; training and inference apart, as `trainer.compile` compiles only the training
path) next to the steady-state speed-ups, and how many epochs of 15-Scene's 1200 training images the
training compile cost takes to pay back. Each measurement runs in a fresh
process with an empty inductor cache, so the compile cost is what a user's first run pays.
Writes results/bench/<machine>/compile.md and .json (bagnet.bench).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import pandas as pd
import torch
import torch.nn.functional as F

from bagnet import create_model, io
from bagnet.bench import write_bench


def bench(name: str, compiled: bool, size: int, batch: int, steps: int, width: int) -> dict:
    torch.manual_seed(0)
    kw = {"width": width} if name.startswith("bagnet") else {}
    model = create_model(name, num_classes=15, **kw).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 15, (batch,))
    fn = torch.compile(model) if compiled else model

    def train_step():
        loss = F.cross_entropy(fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():  # not inference_mode: compiled graphs are traced under no_grad in eval
            fn(x)

    def timed(step, n):
        t = time.perf_counter()
        for _ in range(n):
            step()
        return (time.perf_counter() - t) / n

    model.train()
    first_train = timed(train_step, 1)   # includes compilation when compiled
    t_train = timed(train_step, steps)
    model.eval()
    first_infer = timed(infer, 1)        # eval mode recompiles (BatchNorm behaves differently)
    t_infer = timed(infer, steps)
    return {"model": name, "mode": "compile" if compiled else "eager", "size": size,
            "width": kw.get("width", "default"), "batch": batch,
            "train_img_s": batch / t_train, "infer_img_s": batch / t_infer,
            "first_train_extra_s": first_train - t_train, "first_infer_extra_s": first_infer - t_infer}


def bench_cold(*args) -> dict:
    """`bench` in a new process whose inductor cache is empty (kernels compiled before don't count)."""
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # inherited by the spawned child
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(bench, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["bagnet33", "resnet50"])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--width", type=int, default=32, help="BagNet width (the cpu profile's)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out-root", default=None, help="default: results/bench")
    args = ap.parse_args()
    rows = []
    for name in args.models:
        for compiled in (False, True):
            r = bench_cold(name, compiled, args.size, args.batch, args.steps, args.width)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            rows.append(r)
    df = pd.DataFrame(rows)
    eager = df[df["mode"] == "eager"].set_index("model")
    comp = df[df["mode"] == "compile"].set_index("model")
    ratio = pd.DataFrame({
        "compile/eager train": comp["train_img_s"] / eager["train_img_s"],
        "compile/eager inference": comp["infer_img_s"] / eager["infer_img_s"],
        "train compile s": comp["first_train_extra_s"] - eager["first_train_extra_s"],
        "inference compile s": comp["first_infer_extra_s"] - eager["first_infer_extra_s"],
    })
    # seconds saved per epoch of 1200 images; negative when compile is slower
    saved = 1200 / eager["train_img_s"] - 1200 / comp["train_img_s"]
    ratio["epochs to pay back"] = (ratio["train compile s"] / saved).where(saved > 0)
    ratio = ratio.reset_index()
    device = torch.device("cpu")
    header = (f"fp32, channels_last, AdamW, batch {args.batch}, {args.size} px, BagNet width {args.width}; each "
              f"model and mode in a fresh process with an empty inductor cache, {args.steps} timed steps after the "
              f"first (one round: compile dominates the cost); command: `python scripts/bench_compile.py "
              f"{' '.join(sys.argv[1:])}`. `epochs to pay back`: train compile s / training time saved per epoch of "
              f"1200 images (empty: compile is not faster).")
    md = ("# Eager vs torch.compile, CPU\n\n" + header + "\n\n## Throughput\n\n" + io.to_markdown(df)
          + "\n\n## compile vs eager\n\n" + io.to_markdown(ratio) + "\n")
    headline = {f"{r['model']}: compile / eager train img/s": f"{r['compile/eager train']:.3g}"
                for r in ratio.to_dict(orient="records")}
    kwargs = {"out_root": args.out_root} if args.out_root else {}
    path = write_bench("compile", md, {"headline": headline, "rows": df.to_dict(orient="records"),
                                       "ratios": ratio.to_dict(orient="records")}, device, vars(args), **kwargs)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
