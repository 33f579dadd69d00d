"""Signature 3: models that approximate each other make similar errors.

Reproduces the paper's error-distribution comparison (Brendel & Bethge 2019, Sec. 4, "Error
distribution", Fig. 7): class-wise top-5 accuracies of BagNet-33 plotted against those of each
high-performance CNN, with VGG-11 vs VGG-16 as a reference pair of two CNNs known to be similar.
We add per-image measures the paper does not report: whether the models fail on the *same images*.

Protocol (no forward passes; input = per-image predictions of every model on the same images, as the
runner's eval task writes them: columns index, label, pred, top5_0..top5_4, or a ``top5`` column
holding lists; rows are matched by ``index`` and must carry the same labels, else ValueError):
  * per class c and model m: top-1 / top-5 accuracy over the images labelled c  (table ``per_class``)
  * per pair (a, b), all pairs or ``cfg['pairs']``  (table ``pairs``):
      - r_top5, r_top1: Pearson correlation over classes of the class-wise accuracies (the paper's Fig. 7
        statistic is top-5: the headline), with 95% bootstrap intervals over classes (_lo, _hi);
      - err_a, err_b: top-1 error rates; both_wrong: fraction of images both get wrong (top-1);
        both_wrong_expected = err_a * err_b (independent errors); both_wrong_ratio = the quotient
        (1 = independent, 1 / err for identical models);
      - kappa: Cohen's kappa of the per-image correct/incorrect indicators (0 = chance agreement given
        the two accuracies, 1 = identical correctness); agreement: fraction with equal correctness;
        same_pred: fraction with identical top-1 prediction. kappa has a 95% bootstrap interval over images.
  * with ``reference`` = [cnn_a, cnn_b] (table ``versus_reference``): every other pair's kappa minus the reference
    pair's, paired bootstrap over images, read two-sided — the paper's VGG-11 vs VGG-16 yardstick, per image.

Returns Result with
  tables: ``per_class`` — class, class_name, model, n, top1, top5;
          ``pairs`` — model_a, model_b, n, r_top5(_lo, _hi), r_top1(_lo, _hi), err_a, err_b, both_wrong,
          both_wrong_expected, both_wrong_ratio, kappa(_lo, _hi), agreement, same_pred
  figures: ``class_accuracy_scatter`` (one panel per pair, ``scatter_metric``), ``kappa_matrix``
  raw: the pairs table as records and the number of images
"""
from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bagnet.data.names import display_names
from bagnet.errors import ConfigError
from bagnet.result import Result
from bagnet.stats import correlation_ci, kappa, kappa_ci, paired_bootstrap_ci, pearson
from bagnet.verdicts import reading
from bagnet.utils import jsonable

from .registry import Experiment, register
from .keys import ExperimentConfig, ranged, typed_cfg

@dataclass
class Config(ExperimentConfig):
    pairs: Optional[list[list[str]]] = None   # [[model_a, model_b], ...]; None = every pair
    scatter_metric: str = ranged("top5", choices=("top1", "top5"))   # the paper's Fig. 7 uses top-5
    # [cnn_a, cnn_b]: the reference pair (the paper's VGG-11 vs VGG-16): every other pair's kappa minus its kappa on
    # the same images (table versus_reference). Over few classes the class-wise r says little; image-level error
    # consistency judged against two CNNs' is the reading (Geirhos et al. 2020)
    reference: Optional[list[str]] = None


def _top5_matrix(df: pd.DataFrame) -> np.ndarray:
    cols = sorted((c for c in df.columns if c.startswith("top5_")), key=lambda c: int(c[5:]))
    if cols:
        return df[cols].to_numpy(dtype=np.int64)
    if "top5" in df.columns:   # lists, or their string form after a CSV round trip
        rows = [ast.literal_eval(v) if isinstance(v, str) else list(v) for v in df["top5"]]
        k = max(len(r) for r in rows)
        return np.array([list(r) + [-1] * (k - len(r)) for r in rows], dtype=np.int64)
    raise ValueError("predictions need top5_0..top5_4 columns or a 'top5' column of lists")


def correctness(predictions: dict[str, pd.DataFrame]) -> tuple[np.ndarray, dict, dict, dict]:
    """Aligned labels [N], per-model top-1 predictions and top-1 / top-5 hit vectors (rows sorted by
    ``index``; row order when there is no index column). ValueError if the models saw different images."""
    labels, index, pred, top1, top5 = None, None, {}, {}, {}
    for name, df in predictions.items():
        missing = {"label", "pred"} - set(df.columns)
        if missing:
            raise ValueError(f"predictions of '{name}' lack columns {sorted(missing)}")
        df = df.sort_values("index", kind="stable") if "index" in df.columns else df
        idx = df["index"].to_numpy() if "index" in df.columns else np.arange(len(df))
        lab = df["label"].to_numpy(dtype=np.int64)
        if labels is None:
            labels, index, first = lab, idx, name
        elif len(idx) != len(index) or (idx != index).any():
            raise ValueError(f"predictions of '{name}' and '{first}' are not on the same images (index differs)")
        elif (lab != labels).any():
            raise ValueError(f"predictions of '{name}' and '{first}' disagree on labels of the same images")
        pred[name] = df["pred"].to_numpy(dtype=np.int64)
        top1[name] = pred[name] == lab
        top5[name] = (_top5_matrix(df) == lab[:, None]).any(1)
    if labels is None:
        raise ValueError("no predictions given")
    return labels, pred, top1, top5


def run(predictions: dict[str, pd.DataFrame], classes: Sequence[str] | None = None,
        cfg: Mapping | None = None) -> Result:
    """Class-wise and per-image error overlap of every model pair (see module doc).

    Keys and defaults: :class:`Config`.
    """
    cfg = typed_cfg(Config, cfg, "experiments.error_overlap")
    labels, pred, top1, top5 = correctness(predictions)
    models = list(predictions)
    n_classes = len(classes) if classes is not None else int(labels.max()) + 1
    ids = [str(c) for c in classes] if classes is not None else [str(c) for c in range(n_classes)]
    names = display_names(ids)                # ImageNet wnids -> names; the ids stay in class_id
    counts = np.bincount(labels, minlength=n_classes)

    per_class_rows, acc = [], {}
    for m in models:
        with np.errstate(invalid="ignore", divide="ignore"):
            a1 = np.bincount(labels, weights=top1[m], minlength=n_classes) / counts
            a5 = np.bincount(labels, weights=top5[m], minlength=n_classes) / counts
        acc[m] = {"top1": a1, "top5": a5}
        per_class_rows += [{"class": c, "class_id": ids[c], "class_name": names[c], "model": m, "n": int(counts[c]),
                            "top1": float(a1[c]), "top5": float(a5[c])} for c in range(n_classes) if counts[c]]
    per_class = pd.DataFrame(per_class_rows, columns=["class", "class_id", "class_name", "model", "n", "top1", "top5"])

    pair_rows = []
    for a, b in itertools.combinations(models, 2):
        ea, eb = 1 - top1[a].mean(), 1 - top1[b].mean()
        both = float((~top1[a] & ~top1[b]).mean())
        expected = float(ea * eb)
        ok = counts > 0
        r = {k: correlation_ci(acc[a][k][ok], acc[b][k][ok], seed=cfg["seed"]) for k in ("top1", "top5")}
        kap = kappa_ci(top1[a], top1[b], seed=cfg["seed"])
        pair_rows.append({
            "model_a": a, "model_b": b, "n": int(len(labels)),
            "r_top5": r["top5"].estimate, "r_top5_lo": r["top5"].lo, "r_top5_hi": r["top5"].hi,
            "r_top1": r["top1"].estimate, "r_top1_lo": r["top1"].lo, "r_top1_hi": r["top1"].hi,
            "err_a": float(ea), "err_b": float(eb), "both_wrong": both, "both_wrong_expected": expected,
            "both_wrong_ratio": both / expected if expected > 0 else float("nan"),
            "kappa": kap.estimate, "kappa_lo": kap.lo, "kappa_hi": kap.hi,
            "agreement": float((top1[a] == top1[b]).mean()),
            "same_pred": float((pred[a] == pred[b]).mean())})
    pairs = pd.DataFrame(pair_rows, columns=["model_a", "model_b", "n", "r_top5", "r_top5_lo", "r_top5_hi",
                                             "r_top1", "r_top1_lo", "r_top1_hi", "err_a", "err_b", "both_wrong",
                                             "both_wrong_expected", "both_wrong_ratio", "kappa", "kappa_lo",
                                             "kappa_hi", "agreement", "same_pred"])
    plot_pairs = [tuple(p) for p in cfg["pairs"]] if cfg["pairs"] else list(itertools.combinations(models, 2))
    for p in plot_pairs:
        if len(p) != 2 or not set(p) <= set(models):
            raise ConfigError(f"pair {p} names unknown models; known: {models}")
    metric = cfg["scatter_metric"]
    summary = "error overlap: " + " | ".join(f"{r['model_a']}~{r['model_b']} r_{metric} "
                                             f"{r['r_' + metric]:.2f} kappa {r['kappa']:.2f}" for r in pair_rows)
    tables = {"per_class": per_class, "pairs": pairs}
    if cfg["reference"]:
        tables["versus_reference"] = versus_reference(top1, cfg["reference"], cfg["seed"])
    return Result(tables=tables,
                  figures={"class_accuracy_scatter": scatter_figure(acc, counts, plot_pairs, metric),
                           "kappa_matrix": kappa_figure(pairs, models)},
                  raw=jsonable({"n_images": int(len(labels)), "pairs": pairs.to_dict(orient="records")}),
                  summary=summary)



def kappa_diff(a, b, axis: int = 0):
    """Cohen's kappa of ``a``'s two correctness columns minus that of ``b``'s (``[..., images, 2]``)."""
    return kappa(a[..., 0], a[..., 1], axis=axis) - kappa(b[..., 0], b[..., 1], axis=axis)


def versus_reference(top1: Mapping[str, np.ndarray], reference: Sequence[str], seed: int) -> pd.DataFrame:
    """Each pair of models other than ``reference`` against it: kappa(pair) - kappa(reference) with a paired bootstrap
    95% CI over images (the same resampled images for both pairs), read against the paper's expectation that a pair
    errs as consistently as the two reference models (``contradicted``: the interval lies below 0, the pair shares
    fewer errors beyond chance than they do; ``supported``: above 0)."""
    ref = tuple(reference)
    if len(ref) != 2 or not set(ref) <= set(top1):
        raise ConfigError(f"experiments.error_overlap.reference: {list(ref)} must be two of the models {list(top1)}")
    b = np.stack([top1[ref[0]], top1[ref[1]]], axis=1)
    rows = []
    for x, y in itertools.combinations(top1, 2):
        if {x, y} == set(ref):
            continue
        a = np.stack([top1[x], top1[y]], axis=1)
        ci = paired_bootstrap_ci(a, b, kappa_diff, seed=seed)
        rows.append({"model_a": x, "model_b": y, "kappa": kappa(top1[x], top1[y]), "reference": " vs ".join(ref),
                     "reference_kappa": kappa(*b.T), "difference": ci.estimate, "lo": ci.lo, "hi": ci.hi,
                     "verdict": reading(*ci, expected="greater")})
    return pd.DataFrame(rows, columns=["model_a", "model_b", "kappa", "reference", "reference_kappa", "difference",
                                       "lo", "hi", "verdict"])


def scatter_figure(acc: dict, counts: np.ndarray, pairs: list[tuple[str, str]], metric: str):
    n = max(len(pairs), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.4), squeeze=False, constrained_layout=True)
    ok = counts > 0
    for ax, (a, b) in zip(axes[0], pairs):
        x, y = acc[b][metric][ok], acc[a][metric][ok]
        ax.scatter(x, y, s=10, alpha=0.7)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlim(-0.02, 1.02); ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"{b} class {metric}"); ax.set_ylabel(f"{a} class {metric}")
        flat = [m for m, v in ((b, x), (a, y)) if len(v) and np.ptp(v) == 0]
        ax.set_title(f"r = {pearson(x, y):.2f}" if not flat else
                     f"r undefined: {flat[0]} has {metric} {(x if flat[0] == b else y)[0]:.2f} on every class",
                     fontsize=9)
    fig.suptitle(f"Class-wise {metric} accuracy")
    return fig


def kappa_figure(pairs: pd.DataFrame, models: list[str]):
    k = len(models)
    mat = np.eye(k)
    pos = {m: i for i, m in enumerate(models)}
    for r in pairs.itertuples():
        mat[pos[r.model_a], pos[r.model_b]] = mat[pos[r.model_b], pos[r.model_a]] = r.kappa
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.8 * k), constrained_layout=True)
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k), models, rotation=45, ha="right"); ax.set_yticks(range(k), models)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="Cohen's kappa (top-1 correct)")
    return fig


def figures_from_tables(tables: Mapping[str, pd.DataFrame], metric: str = "top5") -> dict:
    """Both figures, rebuilt from the saved per-class and pair tables (for scripts/render_results.py)."""
    if not {"per_class", "pairs"} <= set(tables):
        return {}
    per_class, pairs = tables["per_class"], tables["pairs"]
    models = list(dict.fromkeys(per_class["model"]))
    wide = {m: per_class[per_class["model"] == m].set_index("class") for m in models}
    index = sorted(set().union(*(w.index for w in wide.values())))
    counts = wide[models[0]]["n"].reindex(index).fillna(0).to_numpy()
    acc = {m: {k: w[k].reindex(index).to_numpy(dtype=float) for k in ("top1", "top5")} for m, w in wide.items()}
    plot_pairs = list(zip(pairs["model_a"], pairs["model_b"]))
    return {"class_accuracy_scatter": scatter_figure(acc, counts, plot_pairs, metric),
            "kappa_matrix": kappa_figure(pairs, models)}


register(Experiment("error_overlap", Config, run, inputs="predictions",
                    models_named=lambda c: [m for pair in (c["pairs"] or []) for m in pair] + list(c["reference"] or []),
                    figures=lambda tables, raw: figures_from_tables(tables),
                    summary="signature 3: class-wise accuracy correlation, shared errors and kappa per model pair"))
