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


SMOKE_KEYS = ("max_steps_per_epoch", "max_eval_images")   # trainer keys that cut a run short: a smoke test


def smoke(cfg: dict) -> list[str]:
    """The trainer keys that made a run a smoke test (a few steps, part of the evaluation), [] for a real run."""
    trainer = cfg.get("trainer") or {}
    return [f"trainer.{k}={trainer[k]}" for k in SMOKE_KEYS if trainer.get(k) is not None]


def collect(root: Path, run_name: str = "seed*", allow_smoke: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs under ``root`` whose run name matches ``run_name`` (a glob; a sweep's runs are named
    ``seed<seed>``, so the demo's ``demo-seed0`` and debug=fast's ``debug-seed0`` are left out), and the smoke
    runs left out (unless ``allow_smoke``: then kept, and marked)."""
    rows, skipped = [], []
    for summary_path in sorted(root.glob("**/summary.json")):
        if not fnmatch.fnmatch(summary_path.parent.name, run_name):
            continue
        s = json.loads(summary_path.read_text())
        cfg = (s.get("provenance") or {}).get("config") or {}
        cut = smoke(cfg)
        if cut and not allow_smoke:
            skipped.append(f"{summary_path.parent} ({', '.join(cut)})")
            continue
        model = cfg.get("model", {})
        ev = s.get("eval", {})
        rows.append({"run": str(summary_path.parent.relative_to(root)), "model": model.get("name"),
                     "patch_size": model.get("patch_size"), "width": model.get("width"),
                     "image_size": cfg.get("data", {}).get("image_size"), "epochs": s.get("epochs"),
                     "best_val_top1": s.get("best_val_top1"),
                     **{f"{split}_{k}": m[k] for split, m in ev.items() for k in ("top1", "top5")},
                     "train_s": round(s.get("train_wall_s", 0)),
                     "commit": (s.get("provenance") or {}).get("git_commit"),
                     **({"smoke": ", ".join(cut)} if allow_smoke else {})})
    return pd.DataFrame(rows), skipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="a runs/ subtree holding */summary.json")
    ap.add_argument("--out", type=Path, required=True, help="output stem directory (sweep.csv/.md go there)")
    ap.add_argument("--run-name", default="seed*", help="glob of the run names to collect (default: seed*)")
    ap.add_argument("--allow-smoke", action="store_true",
                    help="keep smoke runs (trainer.max_steps_per_epoch / max_eval_images set), marked in a column")
    args = ap.parse_args()
    df, skipped = collect(args.root, args.run_name, args.allow_smoke)
    for run in skipped:
        print(f"note: left out the smoke run {run}; --allow-smoke keeps it")
    if df.empty:
        raise SystemExit(f"error: no finished runs named {args.run_name} under {args.root}"
                         + (f" but {len(skipped)} smoke run(s) (--allow-smoke)" if skipped else "")
                         + " (--run-name picks others)")
    io.write_table(df, args.out / "sweep", header=f"Runs `{args.run_name}` collected from `{args.root}`.")
    io.write_json({"provenance": provenance(), "runs": df.to_dict(orient="records")}, args.out / "sweep.json")
    print(io.to_markdown(df))


if __name__ == "__main__":
    main()
