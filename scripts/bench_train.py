#!/usr/bin/env python
"""Training and inference throughput of BagNets and baselines, fp32 vs bf16, side by side in one run.

    python scripts/bench_train.py [--sizes 112 224] [--steps 2] [--device cpu|cuda]

Memory: on CUDA the peak allocated memory; on CPU the bytes autograd saves for the backward pass
(activation memory, the part of training memory that grows with batch and resolution), measured with
saved-tensor hooks. Writes results/bench/train.md and train.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from bagnet import create_model, io
from bagnet.engine import cpu_has_fast_bf16
from bagnet.provenance import provenance
from experiments import published

MODELS = ["bagnet9", "bagnet17", "bagnet33", "resnet50", "densenet169", "vgg16"]


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def bench(name: str, size: int, dtype: torch.dtype | None, batch: int, steps: int, device: torch.device,
          width: int | None, channels_last: bool = True) -> dict:
    kw = {"width": width} if (width and name.startswith("bagnet")) else {}
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(name, num_classes=1000, **kw).to(device).to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def train_step():
        with autocast:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, n):
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t) / n

    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_train = timed(train_step, steps)
    mem = torch.cuda.max_memory_allocated() if device.type == "cuda" else saved_bytes(train_step)
    model.eval()

    def infer():
        with torch.inference_mode(), autocast:
            model(x)
    t_inf = timed(infer, steps)
    return {"model": name, "size": size, "width": kw.get("width", "default"),
            "precision": "bf16" if dtype else "fp32", "layout": "channels_last" if channels_last else "contiguous",
            "batch": batch,
            "train_img_s": batch / t_train, "infer_img_s": batch / t_inf,
            ("peak_mem_MB" if device.type == "cuda" else "saved_activations_MB"): mem / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cpu-profile-width", type=int, default=32, help="BagNet width at the cpu profile (112 px)")
    ap.add_argument("--bf16-sizes", type=int, nargs="*", default=None,
                    help="sizes at which to also time bf16 (default: all); on a CPU without native bf16 it is "
                         "5-10x slower, so timing it once at the small size is enough")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for size in args.sizes:
        width = args.cpu_profile_width if size <= 128 else None
        for name in args.models:
            for dtype in (None, torch.bfloat16):
                if dtype is not None and args.bf16_sizes is not None and size not in args.bf16_sizes:
                    continue
                r = bench(name, size, dtype, args.batch, args.steps, device, width)
                print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
                rows.append(r)
    # channels_last vs contiguous, at the first size, for the two models whose ratio the paper reports
    for name in [m for m in ("bagnet33", "resnet50") if m in args.models]:
        for dtype in (None, torch.bfloat16):
            if dtype is not None and args.bf16_sizes is not None and args.sizes[0] not in args.bf16_sizes:
                continue
            r = bench(name, args.sizes[0], dtype, args.batch, args.steps, device,
                      args.cpu_profile_width if args.sizes[0] <= 128 else None, channels_last=False)
            print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            rows.append(r)
    df = pd.DataFrame(rows)
    key = ["model", "size"]
    cl = df[df.layout == "channels_last"]
    fp32 = cl[cl.precision == "fp32"].set_index(key)
    bf16 = cl[cl.precision == "bf16"].set_index(key)
    speedup = pd.concat([(bf16["train_img_s"] / fp32["train_img_s"]).rename("bf16/fp32 train"),
                         (bf16["infer_img_s"] / fp32["infer_img_s"]).rename("bf16/fp32 inference")],
                        axis=1).dropna().reset_index()
    layout_key = ["model", "size", "precision"]
    contiguous = df[df.layout == "contiguous"].set_index(layout_key)
    cl_idx = cl.set_index(layout_key).loc[contiguous.index]
    layout = pd.concat([(cl_idx["train_img_s"] / contiguous["train_img_s"]).rename("channels_last/contiguous train"),
                        (cl_idx["infer_img_s"] / contiguous["infer_img_s"]).rename(
                            "channels_last/contiguous inference")], axis=1).reset_index()
    ratios = []
    for size in args.sizes:
        for prec in ("fp32", "bf16"):
            sub = cl[(cl["size"] == size) & (cl.precision == prec)].set_index("model")
            if {"bagnet33", "resnet50"} <= set(sub.index):
                ratios.append({"size": size, "precision": prec,
                               "bagnet33/resnet50 inference time": sub.at["resnet50", "infer_img_s"]
                               / sub.at["bagnet33", "infer_img_s"],
                               "bagnet33/resnet50 train time": sub.at["resnet50", "train_img_s"]
                               / sub.at["bagnet33", "train_img_s"]})
    ratios = pd.DataFrame(ratios)
    prov = provenance(device=device, args=vars(args) | {"out": str(args.out)})
    header = (f"Measured {prov['time']} on {prov['device']}, torch {prov['versions']['torch']}, commit "
              f"{prov['git_commit']}; batch {args.batch}, {args.steps} timed steps after one warm-up, "
              f"channels_last unless `layout` says contiguous; CPU with native bf16 (AVX512-BF16/AMX): "
              f"{cpu_has_fast_bf16() if device.type == 'cpu' else 'n/a'}; "
              f"command: `python scripts/bench_train.py {' '.join(sys.argv[1:])}`. BagNets at {args.cpu_profile_width} width for sizes <= 128 (the cpu profile), "
              f"full width otherwise; baselines always full width. The paper reports BagNet-33 at "
              f"~{published.section('runtime')['BagNet-33 / ResNet-50 (GPU)']['ratio']:g}x ResNet-50's runtime.")
    md = (header + "\n\n## Throughput\n\n" + io.to_markdown(df) + "\n\n## bf16 vs fp32\n\n"
          + io.to_markdown(speedup) + "\n\n## channels_last vs contiguous\n\n" + io.to_markdown(layout)
          + "\n\n## BagNet-33 / ResNet-50 time ratio\n\n" + io.to_markdown(ratios) + "\n")
    io.write_text(md, args.out / "train.md")
    io.write_json({"provenance": prov, "rows": df.to_dict(orient="records"),
                   "ratios": ratios.to_dict(orient="records")}, args.out / "train.json")
    print(md)


if __name__ == "__main__":
    main()
