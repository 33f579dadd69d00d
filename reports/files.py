"""Reading the committed result files (``raw.json``) back, and formatting their numbers, for the rendered
documents (reports/readings.py, reports/verdicts.py; tables: :func:`bagnet.io.to_markdown`)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bagnet.io import read_result
from bagnet.stats import fmt_ci

TABLE1 = "table1/cpu-scratch"                # the committed cpu Table 1 (results/...)
SIGNATURES = "signatures/scene15/cpu-scratch"  # the committed 15-Scene signatures

def load(root: Path, folder: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """The tables and provenance (with the raw entries under ``"raw"``) of ``root/folder/raw.json``."""
    blob = read_result(Path(root) / folder / "raw.json")
    prov = {**(blob.get("provenance") or {}), "raw": blob.get("raw") or {}}
    return {k: pd.DataFrame(v) for k, v in (blob.get("tables") or {}).items()}, prov


def ci(row, col: str, digits: int = 3) -> str:
    return fmt_ci(row[col], row[f"{col}_lo"], row[f"{col}_hi"], digits)


def fmt_g(est: float, lo: float, hi: float) -> str:
    """Two significant digits, for quantities spanning orders of magnitude."""
    return f"{est:.2g} [{lo:.2g}, {hi:.2g}]"


def source(prov: dict, folder: str) -> str:
    return (f"Source: `results/{folder}/` ({prov.get('device', '?')}, commit `{str(prov.get('git_commit'))[:10]}`, "
            f"{str(prov.get('time', '?'))[:16]}, {prov.get('wall_s', 0) / 60:.1f} min).")
