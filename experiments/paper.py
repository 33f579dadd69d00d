"""make reproduce-paper's report: the paper's numbers beside ours, and the README of ``results/paper/``.

The pipeline itself is a config (configs/experiment/paper.yaml): the released models (the authors' BagNets,
torchvision's CNNs) under ``models:``, the registered experiments accuracy, texture, additivity, error_overlap,
sensitivity, heatmaps and patches with the paper's settings under ``experiments:``, TF32 off and every forward
guarded (``pipeline.tf32: false``), units kept in ``run_dir`` (a killed run resumes). This module only reads
what they returned.
"""
from __future__ import annotations

import pandas as pd

from bagnet import io
from bagnet.result import Result

from .registry import register_report

WHAT = {"accuracy": "top-1/top-5 per model with 95% intervals, published numbers beside them",
        "texture": "accuracy on Gatys-texturised and on tile-scrambled versions of the same images",
        "additivity": "masking two parts: joint effect vs sum of single effects, vs distance",
        "error_overlap": "class-conditional top-5 accuracy, BagNet vs each CNN; kappa, shared errors",
        "sensitivity": "logit drop vs occluded regions: BagNet heatmap vs captum attributions vs random",
        "heatmaps": "BagNet heatmaps of images of the paper's classes",
        "patches": "the most predictive patches and strongest distractors of the paper's classes"}


@register_report("paper")
def report(ctx, result: Result, trained: dict) -> Result:
    """The headline table (every number the paper or the weights' documentation states, ours beside it) and the
    README; the experiments' folders as they are."""
    summary = headline_table(result.parts)
    tables = {**result.tables, "summary": summary}
    return Result(tables=tables, parts=result.parts, raw=result.raw, summary=result.summary,
                  readme=lambda prov: readme(prov, result.parts, summary, result.raw, ctx.cfg))


def headline_table(parts: dict) -> pd.DataFrame:
    """One row per number the paper (or the weights' documentation) states, ours beside it."""
    rows = []
    if "accuracy" in parts:
        for r in parts["accuracy"].tables["accuracy"].to_dict("records"):
            if not pd.isna(r.get("published top5")):
                rows.append({"experiment": "accuracy", "quantity": f"{r['model']} top-5", "ours": r["top5"],
                             "lo": r["top5_lo"], "hi": r["top5_hi"], "paper": r["published top5"],
                             "source": r["source"]})
    if "texture" in parts:
        for r in parts["texture"].tables["accuracy"].to_dict("records"):
            if not pd.isna(r.get("published top5")):
                rows.append({"experiment": "texture", "quantity": f"{r['model']} top-5, {r['condition']}",
                             "ours": r["top5"], "lo": r["top5_lo"], "hi": r["top5_hi"], "paper": r["published top5"],
                             "source": "unverified"})
    if "sensitivity" in parts:
        s = parts["sensitivity"].tables["logit_drop"]
        for target in s.target.unique():
            d = s[s.target == target].set_index("method")["auc"]
            others = d.drop([m for m in ("bagnet", "occlusion", "random") if m in d.index])
            if "bagnet" in d.index and len(others):
                best = others.idxmax()
                rows.append({"experiment": "sensitivity",
                             "quantity": f"{target}: AUC of BagNet heatmap / best attribution ({best})",
                             "ours": float(d["bagnet"] / others.max()) if others.max() else float("nan"),
                             "lo": None, "hi": None, "paper": None,
                             "source": "paper Fig. 8: > 1 for DenseNet-169 (qualitative, unverified)"})
    return pd.DataFrame(rows, columns=["experiment", "quantity", "ours", "lo", "hi", "paper", "source"])


def readme(prov: dict, parts: dict, summary: pd.DataFrame, raw: dict, cfg) -> str:
    numerics = raw.get("numerics", {})
    n = {p: (r.raw or {}).get("n_images") for p, r in parts.items()}
    lines = [
        "# Brendel & Bethge (ICLR 2019) on ImageNet: `make reproduce-paper`", "",
        (f"Run of {prov.get('time', '?')} on {prov.get('device', '?')}, commit `{prov.get('git_commit', '?')}`, "
         f"{prov.get('wall_s', 0) / 60:.1f} min; data `{cfg.data.name}` ({cfg.split} split, root `{cfg.data.root}`, "
         f"{cfg.data.image_size} px). TF32 during the run: matmul {numerics.get('cuda_matmul_allow_tf32')}, "
         f"cuDNN {numerics.get('cudnn_allow_tf32')} ({numerics.get('guarded_forwards', 0)} guarded forwards). "
         f"Units kept in `{cfg.run_dir}` (run the command again to resume)."), "",
        "## The paper's numbers beside ours", "", io.to_markdown(summary), "",
        "## Experiments", "",
        "| folder | what | images |", "|---|---|---|"]
    lines += [f"| `{p}/` | {WHAT.get(p, p)} | {n.get(p) if n.get(p) is not None else '–'} |" for p in parts]
    lines += ["", ("Deviations and what each number means: the committed description of this folder "
                   "(results/paper/README.md at the commit above), configs/experiment/paper.yaml and each "
                   "experiment's module doc."), ""]
    return "\n".join(lines)

