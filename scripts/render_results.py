#!/usr/bin/env python
"""Rebuild tables and figures under results/ from their raw.json, without retraining.

    python scripts/render_results.py [results/]
    python scripts/render_results.py --documents   # only the number blocks of README.md, results/README.md

Every raw.json written by bagnet.io.write_result holds its tables; this re-writes them as CSV +
Markdown (with the same header) and redraws the figures that can be drawn from tables alone
(Table 1, and every experiment module's ``figures_from_tables``), and the all-profile
``results/table1/table1.{csv,md}``, and a demo's README.md; then re-renders the number blocks of
README.md and results/README.md from those files (reports/readings.py).
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pandas as pd

from bagnet import io
from bagnet.errors import UserError
from experiments.demo import rebuild_demo_readme
from experiments.table1 import table1_overview
from reports.readings import render_document


RESULTS = Path(__file__).resolve().parents[1] / "results"


def figure_makers(raw_path: Path):
    config = (io.read_result(raw_path).get("provenance") or {}).get("config") or {}
    report = (config.get("pipeline") or {}).get("report") if config.get("task") == "pipeline" else None
    # A task's own output (task=scrambling), a pipeline's report (results/table1/<profile>/: report table1) or one
    # part of a pipeline's (results/demo/scrambling/)
    for name in (config.get("task"), report, raw_path.parent.name):
        try:
            module = importlib.import_module(f"experiments.{name}")
        except (ImportError, TypeError, ValueError):
            continue
        if hasattr(module, "figures_from_tables"):
            return module.figures_from_tables
    return None


def render(raw_path: Path) -> list[Path]:
    blob = io.read_result(raw_path)
    tables = {name: pd.DataFrame(cols) for name, cols in (blob.get("tables") or {}).items()}
    written = []
    for name, df in tables.items():
        written += io.write_table(df, raw_path.parent / name, header=blob.get("header", ""))
    maker = figure_makers(raw_path)
    if maker:
        for name, fig in maker(tables).items():
            written += io.write_figure(fig, raw_path.parent / name)
    return written


def render_documents() -> None:
    """Re-render the number blocks of README.md and results/README.md from the files under results/."""
    for doc in (RESULTS.parent / "README.md", RESULTS / "README.md"):
        text = doc.read_text()
        try:
            new = render_document(text, RESULTS)
        except (OSError, KeyError, ValueError) as e:   # a block whose files are missing: keep it, say so
            print(f"{doc}: not re-rendered ({type(e).__name__}: {e})")
            continue
        if new != text:
            io.write_text(new, doc)
        print(f"{doc}: {'re-rendered' if new != text else 'unchanged'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path("results"))
    ap.add_argument("--documents", action="store_true",
                    help="only re-render the documents' number blocks (make demo runs this after the demo)")
    args = ap.parse_args()
    if args.documents:
        return render_documents()
    try:
        raws = io.results_files(args.root)
        for raw in raws:               # every file checked before any is rewritten
            io.read_result(raw)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    if not raws:
        raise SystemExit(f"error: no raw.json under {args.root}")
    overview_roots = set()
    for raw in raws:
        print(f"{raw.parent}: {len(render(raw))} files")
        if figure_makers(raw) and raw.parent.parent.name == "table1":
            overview_roots.add(raw.parent.parent)
    for root in sorted(overview_roots):  # results/table1/table1.{csv,md}: every profile side by side
        overview = table1_overview(root)
        if overview:
            print(f"{root}: {len(io.write_table(overview[0], root / 'table1', header=overview[1]))} files")
    for checks in sorted(args.root.glob("**/accuracy/checks.csv")):  # a demo's README.md
        readme = rebuild_demo_readme(checks.parent.parent)
        if readme:
            io.write_text(readme, checks.parent.parent / "README.md")
            print(f"{checks.parent.parent}: README.md")
    if args.root.resolve() == RESULTS.resolve():           # the documents' number blocks
        render_documents()


if __name__ == "__main__":
    main()
