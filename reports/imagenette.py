"""The rendered numbers of make reproduce-imagenette (README headline row, results/README block), read back from
``results/imagenette/`` (the targets table of experiments/imagenette.py, the accuracy and error-overlap parts)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bagnet.io import to_markdown
from bagnet.stats import fmt_ci
from bagnet.verdicts import emphasis, word

from .files import ci, load, source


def block_imagenette(root: Path, folder: str = "imagenette") -> str:
    """make reproduce-imagenette: every model's test top-1 / top-5 with intervals, each target met or missed (by how
    much) with its reading, and every pair's error consistency against the CNN-CNN reference pair."""
    tables, prov = load(root, folder)
    acc, _ = load(root, f"{folder}/accuracy")
    a = acc["accuracy"]
    lines = ["Test top-1 / top-5 (" + f"{int(a['n'].max())} Imagenette2 val photos): " + "; ".join(
        f"{r['model']} {ci(r, 'top1')} / {ci(r, 'top5')}" for _, r in a.iterrows()) + ".", ""]
    t = tables["targets"]
    shown = pd.DataFrame({
        "target": t["target"],
        "measured": [fmt_ci(m, lo, hi) if pd.notna(lo) else (f"{m:.3f}" if pd.notna(m) else "–")
                     for m, lo, hi in zip(t["measured"], t["lo"], t["hi"])],
        "met": ["–" if pd.isna(m) else "yes" if m else "**no**" for m in t["met"]],
        "missed by": ["–" if pd.isna(x) else f"{x:.3f}" for x in t["missed_by"]],
        "reading": [emphasis(r) for r in t["reading"]]})
    lines += [to_markdown(shown), ""]
    if (Path(root) / folder / "error_overlap" / "raw.json").is_file():
        eo, _ = load(root, f"{folder}/error_overlap")
        if "versus_reference" in eo:
            v = eo["versus_reference"]
            lines += ["Error consistency (Cohen's kappa of the two models' per-image errors) minus the reference "
                      "pair's, paired over the same photos: " + "; ".join(
                          f"{r['model_a']} vs {r['model_b']} {fmt_ci(r['difference'], r['lo'], r['hi'])} "
                          f"({word(r['verdict'])})" for _, r in v.iterrows()) + ".", ""]
    return "\n".join(lines) + source(prov, folder)


def imagenette_headline(root: Path, folder: str = "imagenette") -> tuple[str, str, str, str]:
    """The README headline's row of make reproduce-imagenette: every model's test top-1, the targets met."""
    tables, prov = load(root, folder)
    acc, _ = load(root, f"{folder}/accuracy")
    t = tables["targets"]
    missed = [f"{r['target']} missed by {r['missed_by']:.3f}" if pd.notna(r["missed_by"]) else f"{r['target']} not met"
              for _, r in t.iterrows() if r["met"] is False or r["met"] == 0]
    met = int(t["met"].fillna(False).astype(bool).sum())
    size = ((prov.get("config") or {}).get("data") or {}).get("image_size")
    return (f"Imagenette2 (real ImageNet photos, 10 classes): models trained from scratch at {size} px "
            f"(`results/{folder}/`)",
            "test top-1 " + ", ".join(f"{r['model']} {ci(r, 'top1')}" for _, r in acc["accuracy"].iterrows())
            + f"; targets met: {met}/{len(t)}" + (f" ({'; '.join(missed)})" if missed else ""),
            "–", "`make reproduce-imagenette DATA_ROOT=...`")
