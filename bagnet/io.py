"""The one module that writes files: tables, figures, JSON, checkpoints. Every write is atomic
(temp file in the same directory, then rename), so a run killed mid-write never leaves a torn file."""
from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .result import Result, Text
from .utils import jsonable


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_table(df: pd.DataFrame, path_stem: str | os.PathLike, header: str = "") -> list[Path]:
    """``<stem>.csv`` and ``<stem>.md`` (Markdown, with an optional header paragraph)."""
    stem = Path(path_stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with atomic_path(csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4g")
    write_text((header.rstrip() + "\n\n" if header else "") + to_markdown(df) + "\n", md)
    return [csv, md]


def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """Markdown table without the optional `tabulate` dependency."""
    def fmt(v):
        if isinstance(v, float):
            return "–" if not math.isfinite(v) else floatfmt.format(v)
        return str(v)
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_figure(fig, path_stem: str | os.PathLike, formats=("png", "pdf"), dpi: int = 150) -> list[Path]:
    import matplotlib.pyplot as plt
    out = []
    for ext in formats:
        path = Path(path_stem).with_suffix("." + ext)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


def _text(text: Text, provenance: dict) -> str:
    return text(provenance) if callable(text) else text


def write_result(result: Result, out_dir: str | os.PathLike, provenance: dict) -> list[Path]:
    """Tables as CSV+MD, figures as PNG+PDF, raw numbers + provenance as JSON; each part in a
    sub-folder of its own; the README last."""
    out_dir = Path(out_dir)
    header = _text(result.header, provenance)
    written = []
    for name, part in result.parts.items():
        written += write_result(part, out_dir / name, provenance)
    for name, df in result.tables.items():
        written += write_table(df, out_dir / name, header=header)
    for name, fig in result.figures.items():
        written += write_figure(fig, out_dir / name)
    if result.tables or result.figures or result.raw:
        # Tables go into the JSON too, so scripts/render_results.py can rebuild everything from it.
        tables = {name: df.to_dict(orient="list") for name, df in result.tables.items()}
        written.append(write_json({"provenance": provenance, "summary": result.summary, "header": header,
                                   "tables": tables, "raw": result.raw}, out_dir / "raw.json"))
    if result.readme:
        written.append(write_text(_text(result.readme, provenance), out_dir / "README.md"))
    return written


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Per-image predictions, gzip CSV (compact, and readable without extra packages)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression="gzip", float_format="%.5g")
    return Path(path)
