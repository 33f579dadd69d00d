#!/usr/bin/env python
"""Training and inference img/s of BagNet-9/17/33 vs ResNet-50, fp32 and bf16, 112 and 224 px, in one run.

    python scripts/bench_train.py [--sizes 112 224] [--repeats 5] [--batch 8] [--device cpu|cuda]

One training step = autocast forward, cross-entropy, backward, SGD step (momentum 0.9), channels_last;
inference = the forward under `inference_mode`. Every (model, size, precision) is timed once per round and
the rounds are interleaved, so the BagNet-33 / ResNet-50 time ratio is taken within each round; figures are
medians [min, max] over rounds. BagNets at the cpu profile's width (--cpu-profile-width) at sizes <= 128,
full width at 224; ResNet-50 always full width. On CPU the bytes autograd saves for backward (activation
memory) are measured once per configuration; on CUDA the peak allocated memory. The process lets glibc
reuse freed memory, as the runner does (`bagnet.engine.keep_freed_cpu_memory`).

Writes results/bench/<machine>/train.md and .json (bagnet.bench).
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch

from bagnet import io
from bagnet.bench import (TRAINING_OPS, fmt_spread, interleaved, load_average, machine_id, make_steps, spread,
                          where_time_goes, write_bench)
from bagnet.engine import keep_freed_cpu_memory

MODELS = ["bagnet9", "bagnet17", "bagnet33", "resnet50"]
TARGET_RATIO = 4.0   # BagNet-33 / ResNet-50 training time per image at 224 px (FLOP ratio 3.98)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpu-profile-width", type=int, default=32)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out-root", default=None, help="default: results/bench")
    ap.add_argument("--name", default="train", help="the bench's file name under results/bench/<machine>/ (another "
                    "name keeps the default bench's file, e.g. imagenette_cnns for the CNNs a recipe chose between)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    load_before = load_average()
    print(f"machine {machine_id(device)}; load {load_before}")
    torch.manual_seed(0)
    configs, fns, mem = [], {}, {}
    for size in args.sizes:
        width = args.cpu_profile_width if size <= 128 else None
        for name in args.models:
            for prec in args.precisions:
                key = (name, size, prec)
                train, infer, mem[key] = make_steps(name, size, torch.bfloat16 if prec == "bf16" else None,
                                                    args.batch, device, width)
                configs.append(key)
                fns[f"train {name} {size} {prec}"] = train
                fns[f"infer {name} {size} {prec}"] = infer
    times = interleaved(fns, args.repeats, device, warmup=False)
    load_after = load_average()
    profile_rows = []                       # after the timed rounds: the profiler's overhead stays out of them
    if device.type == "cpu":
        for name in [m for m in ("bagnet33", "resnet50") if m in args.models]:
            for prec in args.precisions:
                key = f"train {name} {max(args.sizes)} {prec}"
                profile_rows.append({"training step": key[6:], **{k: f"{v:.0%}" for k, v in
                                                                 where_time_goes(fns[key], TRAINING_OPS).items()}})

    rows, ratios, headline = [], [], {}
    for name, size, prec in configs:
        tr, inf = times[f"train {name} {size} {prec}"], times[f"infer {name} {size} {prec}"]
        width = args.cpu_profile_width if size <= 128 and name.startswith("bagnet") else "full"
        rows.append({"model": name, "size": size, "width": width, "precision": prec,
                     "train img/s": fmt_spread(spread([args.batch / t for t in tr])),
                     "inference img/s": fmt_spread(spread([args.batch / t for t in inf])),
                     ("peak MB" if device.type == "cuda" else "saved activations MB"):
                         round(mem[(name, size, prec)] / 2**20)})
    for size in args.sizes:
        for prec in args.precisions:
            k = {m: f"{size} {prec}" for m in ("bagnet33", "resnet50")}
            if not all(f"train {m} {v}" in times for m, v in k.items()):
                continue
            tr = spread([b / r for b, r in zip(times[f"train bagnet33 {k['bagnet33']}"],
                                               times[f"train resnet50 {k['resnet50']}"])])
            inf = spread([b / r for b, r in zip(times[f"infer bagnet33 {k['bagnet33']}"],
                                                times[f"infer resnet50 {k['resnet50']}"])])
            ratios.append({"size": size, "precision": prec, "train time ratio": fmt_spread(tr),
                           "inference time ratio": fmt_spread(inf), "_train": tr})
            headline[f"BagNet-33 / ResNet-50 train time, {size} px {prec}"] = fmt_spread(tr)
    if args.name != "train":   # a named bench: every model's training throughput is its headline
        headline.update({f"{r['model']} train img/s, {r['size']} px {r['precision']}": r["train img/s"] for r in rows})
    verdicts = [f"- {r['size']} px {r['precision']}: BagNet-33 takes {r['train time ratio']}x ResNet-50's training "
                f"time per image (target <= {TARGET_RATIO:g} at 224 px): "
                f"**{'holds' if r['_train']['median'] <= TARGET_RATIO else 'MISSED'}**"
                for r in ratios if r["size"] == 224]
    ratio_df = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in ratios])
    md = (f"# Training and inference throughput: {', '.join(args.models)}\n\n"
          f"Batch {args.batch}, channels_last, SGD; {args.repeats} interleaved rounds, median [min, max]; BagNets at "
          f"width {args.cpu_profile_width} at sizes <= 128 (the cpu profile), full width at 224. "
          f"Command: `python scripts/bench_train.py --sizes {' '.join(map(str, args.sizes))} --repeats {args.repeats} "
          f"--batch {args.batch} --models {' '.join(args.models)} --precisions {' '.join(args.precisions)}"
          f"{'' if args.name == 'train' else ' --name ' + args.name}`.\n\n" + "\n".join(verdicts) + ("\n\n## BagNet-33 / ResNet-50 time ratio (per round)\n\n"
          + io.to_markdown(ratio_df) if len(ratio_df) else "") + "\n\n## Throughput\n\n" + io.to_markdown(pd.DataFrame(rows)) + "\n"
          + ("\n## Where the time goes\n\nShare of self CPU time by kind of op, one profiled training step each "
             "(torch.profiler, after the timed rounds).\n\n" + io.to_markdown(pd.DataFrame(profile_rows).fillna(""))
             + "\n" if profile_rows else ""))
    kwargs = {"out_root": args.out_root} if args.out_root else {}
    path = write_bench(args.name, md, {"headline": headline, "rows": rows,
                                     "ratios": [{k: v for k, v in r.items() if k != "_train"} | {"train": r["_train"]}
                                                for r in ratios],
                                     "times_s": times, "profile": profile_rows}, device, vars(args), load=(load_before, load_after), **kwargs)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
