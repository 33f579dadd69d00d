"""Is decoding the bottleneck of training? Images/s of the 15-Scene train loader (decode + augment) at 112
and 224 px with 0/1/2 workers, with and without the decoded-image cache.

    python scripts/bench_data.py --root /path/to/scene15 [--image-sizes 112 224] [--seconds 4]

About 1.5 minutes. Writes results/bench/<machine>/data.md and .json (bagnet.bench).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch

from bagnet import io
from bagnet.bench import fmt_spread, interleaved, load_average, spread, write_bench
from bagnet.data import build_data, build_loader



def loader_rate(ds, batch: int, workers: int, seconds: float, warm: bool) -> float:
    """Images/s for up to ``seconds``, timed from the first batch (excludes worker start-up).
    warm: run one full untimed epoch first (fills the cache; persistent workers keep theirs)."""
    loader = build_loader(ds, batch, train=True, seed=0, workers=workers)
    if warm:
        for _ in loader:
            pass
    n, t0 = 0, None
    for x, _ in loader:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += x.shape[0]
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=os.environ.get("SCENE15_ROOT"), help="15-Scene folder (default: $SCENE15_ROOT)")
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=4, help="per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-root", default=None, help="default: results/bench")
    args = ap.parse_args()
    if not args.root or not Path(args.root).is_dir():
        raise SystemExit(f"bench_data: no 15-Scene folder at {args.root}; pass --root /path/to/scene15 or set SCENE15_ROOT (make bench DATA_ROOT=...)")
    device = torch.device("cpu")
    load_before = load_average()
    fns = {}
    for size in args.image_sizes:
        for cache in (False, True):
            data = build_data({"name": "scene15", "root": args.root, "image_size": size, "cache": cache})
            for workers in (0, 1, 2):
                if cache and workers != 2:
                    continue
                name = f"{size} px, {workers} workers, cache {'on' if cache else 'off'}"
                fns[name] = (lambda name=name, ds=data.train, w=workers, c=cache: rates.setdefault(name, []).append(
                    loader_rate(ds, args.batch_size, w, args.seconds, warm=c)))
    rates: dict[str, list[float]] = {}
    interleaved(fns, args.repeats, device, warmup=False)
    load_after = load_average()
    rows, headline = [], {}
    for name in fns:
        s = spread(rates[name])
        rows.append({"loader": name, "images/s": fmt_spread(s)})
        if "2 workers, cache off" in name:
            headline[f"15-Scene loader img/s, {name}"] = fmt_spread(s)
    md = (f"# Data loading: 15-Scene train split (decode + RandomResizedCrop + flip), batch {args.batch_size}\n\n"
          f"{args.repeats} interleaved rounds of {args.seconds:g} s each per setting, timed from the first batch "
          f"(worker start-up excluded); median [min, max]. Command: `python scripts/bench_data.py`.\n\n"
          + io.to_markdown(pd.DataFrame(rows)) + "\n\n"
          "Decoding is not the bottleneck when the loader's images/s exceed the training step's "
          "(`train.md` beside this file, same machine). `cache: true` keeps decoded images in each worker's memory "
          "after the first epoch. Workers run with 1 torch thread; 0 workers decode in the training process.\n")
    kwargs = {"out_root": args.out_root} if args.out_root else {}
    path = write_bench("data", md, {"headline": headline, "rows": rows}, device, vars(args),
                       load=(load_before, load_after), **kwargs)
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
