#!/usr/bin/env python
"""Collect finished training runs (e.g. a patch-size sweep) into one table.

    python scripts/collect_sweep.py runs/train/scene15 --out results/sweep_patch/scene15
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bagnet import io
from bagnet.provenance import provenance


def collect(root: Path) -> pd.DataFrame:
    rows = []
    for summary_path in sorted(root.glob("**/summary.json")):
        s = json.loads(summary_path.read_text())
        cfg = (s.get("provenance") or {}).get("config") or {}
        model = cfg.get("model", {})
        ev = s.get("eval", {})
        rows.append({"run": str(summary_path.parent.relative_to(root)), "model": model.get("name"),
                     "patch_size": model.get("patch_size"), "width": model.get("width"),
                     "image_size": cfg.get("data", {}).get("image_size"), "epochs": s.get("epochs"),
                     "best_val_top1": s.get("best_val_top1"),
                     **{f"{split}_{k}": m[k] for split, m in ev.items() for k in ("top1", "top5")},
                     "train_s": round(s.get("train_wall_s", 0)),
                     "commit": (s.get("provenance") or {}).get("git_commit")})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a runs/ subtree holding */summary.json")
    ap.add_argument("--out", type=Path, required=True, help="output stem directory (sweep.csv/.md go there)")
    args = ap.parse_args()
    df = collect(args.root)
    if df.empty:
        raise SystemExit(f"error: no finished runs (summary.json) under {args.root}")
    io.write_table(df, args.out / "sweep", header=f"Runs collected from `{args.root}`.")
    io.write_json({"provenance": provenance(), "runs": df.to_dict(orient="records")}, args.out / "sweep.json")
    print(io.to_markdown(df))


if __name__ == "__main__":
    main()
