#!/usr/bin/env python
"""Collect finished training runs (e.g. a patch-size sweep) into one table.

    python scripts/collect_sweep.py runs/train/scene15 --out results/sweep_patch/scene15
"""
from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import pandas as pd

from bagnet import io
from bagnet.provenance import provenance


def collect(root: Path, run_name: str = "seed*") -> pd.DataFrame:
    """Finished runs under ``root`` whose run name matches ``run_name`` (a glob; a sweep's runs are named
    ``seed<seed>``, so the demo's ``demo-seed0`` and debug=fast's ``debug-seed0`` are left out)."""
    rows = []
    for summary_path in sorted(root.glob("**/summary.json")):
        if not fnmatch.fnmatch(summary_path.parent.name, run_name):
            continue
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
    ap.add_argument("--run-name", default="seed*", help="glob of the run names to collect (default: seed*)")
    args = ap.parse_args()
    df = collect(args.root, args.run_name)
    if df.empty:
        raise SystemExit(f"error: no finished runs named {args.run_name} under {args.root} (--run-name picks others)")
    io.write_table(df, args.out / "sweep", header=f"Runs `{args.run_name}` collected from `{args.root}`.")
    io.write_json({"provenance": provenance(), "runs": df.to_dict(orient="records")}, args.out / "sweep.json")
    print(io.to_markdown(df))


if __name__ == "__main__":
    main()
