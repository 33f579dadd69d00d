"""Check the synthetic probe's ground truth empirically: train BagNet-9/17/33 and small_cnn briefly and
report accuracy per class kind (local / mid / global) on the test split.

    python scripts/check_synthetic.py [--seconds 60] [--width 8] [--image-size 112] [--models ...]

Expected (see bagnet/data/synthetic.py): BagNet-9 solves local only; BagNet-17/33 local and mid;
no BagNet beats chance (0.5) within the global pair; small_cnn solves all.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from bagnet import create_model
from bagnet.data import build_data, build_loader


def per_kind(model, loader, kinds: list[str]) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[int]] = {}
    pair: dict[str, list[int]] = {}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, y in loader:
            logits = model(x).float()
            pred = logits.argmax(1)
            for yi, pi, li in zip(y.tolist(), pred.tolist(), logits):
                k = kinds[yi]
                hits.setdefault(k, []).append(int(pi == yi))
                # Within-pair accuracy: pick between the two classes of this kind only.
                same = [j for j, kk in enumerate(kinds) if kk == k]
                pair.setdefault(k, []).append(int(same[int(li[same].argmax())] == yi))
    out = {k: sum(v) / len(v) for k, v in hits.items()}
    out.update({f"{k}_pair": sum(v) / len(v) for k, v in pair.items() if k != "local"})
    return out


def recalibrate_bn(model, loader, batches: int = 20) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over some training batches.
    BagNet's stem BN uses momentum 0.001 (as in the release), so after a minute of training its running
    statistics are still near their initial values and eval-mode outputs would be meaningless."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None            # cumulative moving average
    model.train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for k, (x, _) in enumerate(loader):
            if k == batches:
                break
            model(x)


def train(name: str, width: int, data, seconds: float, batch: int, lr: float, seed: int) -> tuple[dict, float, int]:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=data.num_classes, width=width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = build_loader(data.train, batch, train=True, seed=seed)
    t0, epochs = time.time(), 0
    while time.time() - t0 < seconds:
        model.train()
        loader.sampler.set_epoch(epochs)
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if time.time() - t0 > seconds:
                break
        epochs += 1
    recalibrate_bn(model, loader)
    wall = time.time() - t0
    kinds = [data.info["class_kinds"][c] for c in data.classes]
    return per_kind(model, build_loader(data.test, 128, train=False), kinds), wall, epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--cnn-width", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--samples-per-class", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=["bagnet9", "bagnet17", "bagnet33", "small_cnn"])
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    data = build_data({"name": "synthetic", "root": None, "image_size": args.image_size,
                       "samples_per_class": args.samples_per_class}, seed=args.seed)
    print(f"generated {data.info['sizes']} at {args.image_size}px in {time.time() - t0:.1f}s; "
          f"global pair blind up to q={data.info['global_blind_q']}", flush=True)
    print("| model | width | epochs | wall s | local | mid | global | mid (within pair) | global (within pair) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        width = args.cnn_width if name == "small_cnn" else args.width
        acc, wall, epochs = train(name, width, data, args.seconds, args.batch_size, args.lr, args.seed)
        print(f"| {name} | {width} | {epochs} | {wall:.0f} | {acc['local']:.2f} | {acc['mid']:.2f} | "
              f"{acc['global']:.2f} | {acc['mid_pair']:.2f} | {acc['global_pair']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
