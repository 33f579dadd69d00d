#!/usr/bin/env python
"""Rebuild tables and figures under results/ from their raw.json, without retraining.

    python scripts/render_results.py [results/]

Every raw.json written by bagnet.io.write_result holds its tables; this re-writes them as CSV +
Markdown (with the same header) and redraws the figures that can be drawn from tables alone
(Table 1, and any experiment module that defines ``figures_from_tables``).
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pandas as pd

from bagnet import io


def figure_makers(raw_path: Path):
    task = ((json.loads(raw_path.read_text()).get("provenance") or {}).get("config") or {}).get("task")
    if task == "table1":
        from bagnet.pipelines import table1_figure
        return lambda tables: {"table1": table1_figure(tables["table1"])} if "table1" in tables else {}
    try:
        module = importlib.import_module(f"experiments.{task}")
    except (ImportError, TypeError):
        return None
    return getattr(module, "figures_from_tables", None)


def render(raw_path: Path) -> list[Path]:
    blob = json.loads(raw_path.read_text())
    tables = {name: pd.DataFrame(cols) for name, cols in (blob.get("tables") or {}).items()}
    written = []
    for name, df in tables.items():
        written += io.write_table(df, raw_path.parent / name, header=blob.get("header", ""))
    maker = figure_makers(raw_path)
    if maker:
        for name, fig in maker(tables).items():
            written += io.write_figure(fig, raw_path.parent / name)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path("results"))
    args = ap.parse_args()
    raws = sorted(args.root.glob("**/raw.json"))
    if not raws:
        raise SystemExit(f"error: no raw.json under {args.root}")
    for raw in raws:
        print(f"{raw.parent}: {len(render(raw))} files")


if __name__ == "__main__":
    main()
