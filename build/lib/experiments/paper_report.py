"""Tables, figures and the README of ``make reproduce-paper`` (:mod:`experiments.paper`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bagnet import io
from bagnet.result import Result


def summarise_drops(target: str, method: str, d: np.ndarray, report_n) -> tuple[dict, list[dict]]:
    """The rows :func:`experiments.sensitivity.run` reports, for one method's drop curves d [n_images, N]."""
    mean = d.mean(0)
    sem = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(d.shape[1], np.nan)
    row = {"target": target, "method": method, "n_images": len(d),
           **{f"drop_{n}": float(mean[n - 1]) if n <= d.shape[1] else float("nan") for n in report_n},
           "auc": float(mean.mean())}
    return row, [{"target": target, "method": method, "n": n + 1, "mean_drop": float(mean[n]), "sem": float(sem[n])}
                 for n in range(d.shape[1])]


def close_figures(result: Result) -> None:
    """Close the figures of a per-model sub-result: the part redraws them for all models together."""
    for fig in result.figures.values():
        plt.close(fig)


def accuracy_figure(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(table), 3.6), constrained_layout=True)
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["top5"], 0.4, label="ours top-5")
    pub = pd.to_numeric(table["published top5"], errors="coerce")
    ax.bar(x + 0.2, pub, 0.4, label="published top-5", color="0.6")
    ax.set_xticks(x, table["model"], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-5 accuracy")
    ax.legend(fontsize=8)
    return fig


def texture_figure(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * table["model"].nunique(), 3.6), constrained_layout=True)
    conds = list(dict.fromkeys(table["condition"]))
    models = list(dict.fromkeys(table["model"]))
    x = np.arange(len(models))
    w = 0.8 / max(len(conds), 1)
    for i, cond in enumerate(conds):
        d = table[table.condition == cond].set_index("model").reindex(models)
        ax.bar(x + (i - (len(conds) - 1) / 2) * w, d["top5"], w, label=cond)
    ax.set_xticks(x, models, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("top-5 accuracy")
    ax.legend(fontsize=8)
    return fig


def loss_figure(loss: np.ndarray):
    fig, ax = plt.subplots(figsize=(4, 3), constrained_layout=True)
    if len(loss):
        ax.semilogy(np.median(loss, 0), label="median")
        ax.fill_between(np.arange(loss.shape[1]), loss.min(0), loss.max(0), alpha=0.2, label="min-max")
        ax.legend(fontsize=8)
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel("normalised Gram loss")
    return fig


def headline_table(parts: dict, cfg: dict) -> pd.DataFrame:
    """One row per number the paper (or the weights' documentation) states, ours beside it."""
    rows = []
    if "accuracy" in parts:
        for r in parts["accuracy"].tables["accuracy"].to_dict("records"):
            if r["published top5"] is not None and not pd.isna(r["published top5"]):
                rows.append({"experiment": "accuracy", "quantity": f"{r['model']} top-5", "ours": r["top5"],
                             "paper": r["published top5"], "source": r["source"]})
    if "texture" in parts:
        for r in parts["texture"].tables["accuracy"].to_dict("records"):
            if r["published top5"] is not None and not pd.isna(r["published top5"]):
                rows.append({"experiment": "texture", "quantity": f"{r['model']} top-5, {r['condition']}",
                             "ours": r["top5"], "paper": r["published top5"], "source": "unverified"})
    if "sensitivity" in parts:
        s = parts["sensitivity"].tables["logit_drop"]
        for tgt in s.target.unique():
            d = s[s.target == tgt].set_index("method")["auc"]
            others = d.drop([m for m in ("bagnet", "occlusion", "random") if m in d.index])
            if "bagnet" in d.index and len(others):
                best = others.idxmax()
                rows.append({"experiment": "sensitivity",
                             "quantity": f"{tgt}: AUC of BagNet heatmap / best attribution ({best})",
                             "ours": float(d["bagnet"] / others.max()) if others.max() else float("nan"),
                             "paper": None, "source": "paper Fig. 8: > 1 for DenseNet-169 (qualitative, unverified)"})
    return pd.DataFrame(rows, columns=["experiment", "quantity", "ours", "paper", "source"])


def readme(prov: dict, parts: dict, summary: pd.DataFrame, raw: dict, cfg) -> str:
    n = {p: (r.raw.get("n_images") if r.raw else None) for p, r in parts.items()}
    lines = [
        "# Brendel & Bethge (ICLR 2019) on ImageNet: `make reproduce-paper`", "",
        (f"Run of {prov.get('time', '?')} on {prov.get('device', '?')}, commit `{prov.get('git_commit', '?')}`, "
         f"{raw['wall_s'] / 60:.1f} min; data `{cfg.data.name}` ({cfg.split} split, root `{cfg.data.root}`, "
         f"{cfg.data.image_size} px). TF32 during the run: matmul {raw['numerics']['cuda_matmul_allow_tf32']}, "
         f"cuDNN {raw['numerics']['cudnn_allow_tf32']} ({raw['numerics']['guarded_forwards']} guarded forwards). "
         f"Units computed: {len(raw['resume']['computed'])}, reused from `{raw['run_dir']}`: "
         f"{len(raw['resume']['reused'])}."), "",
        "## The paper's numbers beside ours", "", io.to_markdown(summary), "",
        "## Parts", "",
        "| folder | what | images |", "|---|---|---|"]
    what = {"accuracy": "top-1/top-5 per model, published numbers beside them",
            "texture": "accuracy on Gatys-texturised and on tile-scrambled images",
            "interactions": "masking two parts: joint effect vs sum of single effects, vs distance",
            "errors": "class-conditional top-5 accuracy, BagNet vs each CNN; kappa, shared errors",
            "sensitivity": "logit drop vs occluded regions: BagNet heatmap vs captum attributions vs random",
            "patches": "BagNet heatmaps and most predictive patches of fixed classes"}
    lines += [f"| `{p}/` | {what[p]} | {n.get(p) if n.get(p) is not None else '–'} |" for p in parts]
    lines += ["", ("Deviations and what each number means: see the committed description of this folder in the "
                   "repository (results/paper/README.md at the commit above) and `experiments/paper.py`."), ""]
    return "\n".join(lines)
