"""Uncertainty for headline numbers: bootstrap confidence intervals, Cohen's kappa, derangements (the words
read from an interval: :mod:`bagnet.verdicts`).

Everything here is numpy + pandas + scipy, vectorised over bootstrap replicates and seeded
(``numpy.random.default_rng(seed)``), so the same call always gives the same interval.

:func:`scipy.stats.bootstrap` draws the resamples and evaluates the statistic on them (``method="BCa"``
gives its bias-corrected interval). By hand, because scipy does not do it:

* the percentile interval (:func:`_quantiles`): ``np.quantile`` of the replicates, dropping NaN ones. scipy's
  own quantile differs in the last bits (90 of 210 random intervals tried) and keeps NaN replicates; the
  committed results were computed with this rule, and with it every interval is bit-identical to the one the
  earlier, all-numpy version of this module gave (measured on 368 random cases, every function);
* the draw order (:func:`_batch`): scipy gets the same ``batch`` as the earlier chunks, which is what makes
  the replicates identical;
* the resampling of whole groups of rows of a frame (:func:`grouped_bootstrap_ci`; scipy resamples the
  group numbers) and samples of one item (every resample is that item; scipy refuses them).

Conventions
-----------
* The first axis of every array is the resampling unit (images, or classes for class-wise tables).
* Intervals are **percentile bootstrap** intervals: resample the units with replacement ``n_boot``
  times, recompute the statistic, take the ``(1-level)/2`` and ``(1+level)/2`` quantiles.
* A statistic is a function that reduces along an ``axis`` keyword: ``stat(x, axis=0)`` gives the
  estimate, ``stat(x_boot, axis=1)`` is called on a ``(n_boot, n, ...)`` stack of resamples and must
  return one value per replicate. numpy reductions (``np.mean``, ``np.median``) and the two-sample
  statistics below (``mean_diff``, ``mean_ratio``, ``kappa``, ``pearson``) all follow it. A function
  without an ``axis`` keyword is also accepted; it is then called once per replicate (slower).
* Replicates where the statistic is undefined (NaN, e.g. a correlation of a constant resample) are
  dropped from the quantiles; if more than half are NaN the interval is (nan, nan).
* Every ``*_ci`` function returns a :class:`CI` ``(estimate, lo, hi)`` named tuple, which unpacks like
  a plain tuple and formats with :func:`fmt_ci`.

Typical uses in this suite (all on the same test images, hence paired)::

    acc = bootstrap_ci(correct)                             # top-1 with its 95% CI
    d = paired_bootstrap_ci(correct_bagnet, correct_resnet)  # accuracy difference, mean_diff
    kept = ratio_ci(correct_scrambled, correct_clean)        # share of clean accuracy kept
    k = kappa_ci(correct_a, correct_b)                       # error overlap
    r = grouped_bootstrap_ci(df, "label", classwise_corr)    # correlation of class accuracies
"""
from __future__ import annotations

import inspect
import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import scipy.stats
from scipy.stats import DegenerateDataWarning

__all__ = [
    "CI", "bootstrap_ci", "paired_bootstrap_ci", "independent_bootstrap_ci", "ratio_ci",
    "grouped_bootstrap_ci", "correlation_ci", "kappa", "kappa_ci", "mean_diff", "mean_ratio",
    "pearson", "kept_share_diff", "excludes", "derangement", "is_derangement", "fmt_ci",
]

# Upper bound on the number of array elements one vectorised chunk of replicates may hold
# (float64: 8 bytes each, so 16M elements = 128 MB).
_MAX_CHUNK_ELEMENTS = 16_000_000


class CI(NamedTuple):
    """A point estimate with its confidence interval; unpacks as ``est, lo, hi``."""

    estimate: float
    lo: float
    hi: float

    def __str__(self) -> str:
        return fmt_ci(*self)


# ----------------------------------------------------------------------------- statistics

def mean_diff(a, b, axis: int = 0):
    """``mean(a) - mean(b)`` along ``axis`` (e.g. the accuracy difference of two models)."""
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def mean_ratio(a, b, axis: int = 0):
    """``mean(a) / mean(b)`` along ``axis`` (e.g. scrambled / clean accuracy); NaN where mean(b) == 0."""
    num, den = np.mean(a, axis=axis), np.mean(b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.nan, num / np.where(den == 0, 1, den))


def kept_share_diff(a, b, axis: int = 0, chance: float = 0.0):
    """(manipulated / clean accuracy of a) - (the same of b); a, b: [..., images, 2] = (manipulated, clean)
    correctness of two models on the same images (the share of clean accuracy each keeps when scrambled).
    With ``chance`` (1 / classes) the share of what each had above chance: (manipulated - chance) / (clean -
    chance), so that two models both falling to chance keep the same (0), whatever their clean accuracy."""
    ma, mb = np.mean(a, axis=axis) - chance, np.mean(b, axis=axis) - chance
    with np.errstate(divide="ignore", invalid="ignore"):
        return ma[..., 0] / ma[..., 1] - mb[..., 0] / mb[..., 1]


def pearson(x, y, axis: int = 0):
    """Pearson correlation of ``x`` and ``y`` along ``axis`` (a float for 1-D inputs).

    NaN rule: the correlation is NaN where it is undefined, i.e. fewer than two items or either side constant
    (its spread no more than rounding noise), and where an input holds a NaN or inf: no item is dropped, a
    correlation of a filtered subset being another statistic.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape[axis] < 2:
        r = np.full(np.sum(x, axis=axis).shape, np.nan)
        return float(r) if r.ndim == 0 else r
    with np.errstate(divide="ignore", invalid="ignore"):   # NaN / inf inputs: NaN, without warnings
        xc = x - x.mean(axis=axis, keepdims=True)
        yc = y - y.mean(axis=axis, keepdims=True)
        sxy = (xc * yc).sum(axis=axis)
        sxx, syy = (xc * xc).sum(axis=axis), (yc * yc).sum(axis=axis)
        den = np.sqrt(sxx * syy)
        # relative threshold: a "constant" vector leaves only rounding noise in its sum of squares
        scale = (np.abs(x).max(axis=axis) + np.abs(y).max(axis=axis)) ** 2 * x.shape[axis] + 1e-300
        bad = (sxx <= 1e-24 * scale) | (syy <= 1e-24 * scale)
        r = np.clip(np.where(bad, np.nan, sxy / np.where(bad, 1.0, den)), -1.0, 1.0)
    return float(r) if r.ndim == 0 else r


def kappa(a_correct, b_correct, axis: int = 0):
    """Cohen's kappa of two boolean correctness vectors (per image: did model A / B get it right).

    ``(p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of images where both agree (both right or both
    wrong) and ``p_e = p_a p_b + (1-p_a)(1-p_b)`` the agreement expected from independent errors at the
    same accuracies. 1 = identical, 0 = chance, < 0 = less overlap than chance. When both vectors are
    the same constant (``p_e == 1``) the formula is 0/0; it is taken as 1.0 (identical), as in
    ``experiments.error_overlap.cohen_kappa``. Vectorised along ``axis``.
    """
    a = np.asarray(a_correct).astype(bool)
    b = np.asarray(b_correct).astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"kappa needs two vectors of the same shape, got {a.shape} and {b.shape}")
    po = (a == b).mean(axis=axis)
    pa, pb = a.mean(axis=axis), b.mean(axis=axis)
    pe = pa * pb + (1 - pa) * (1 - pb)
    degenerate = pe >= 1.0 - 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        k = (po - pe) / np.where(degenerate, 1.0, 1 - pe)
    k = np.where(degenerate, np.where(po >= 1.0, 1.0, np.nan), k)
    return float(k) if np.ndim(k) == 0 else k


# ----------------------------------------------------------------------------- bootstrap machinery

def _accepts_axis(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):   # some builtins / ufuncs have no signature
        return False
    return "axis" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _quantiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    boot = np.asarray(boot, dtype=float).reshape(len(boot), -1)
    if boot.shape[1] != 1:
        raise ValueError("the statistic must return one number per replicate")
    boot = boot[:, 0]
    ok = np.isfinite(boot)
    if ok.sum() < max(1, len(boot) // 2):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot[ok], [alpha, 1 - alpha])
    return float(lo), float(hi)


def _scalar(x) -> float:
    x = np.asarray(x, dtype=float)
    if x.size != 1:
        raise ValueError(f"the statistic must return one number, got shape {x.shape}")
    return float(x.reshape(()))


def _batch(samples: Sequence[np.ndarray], n_boot: int) -> int:
    """Replicates per vectorised chunk (bounded memory); also fixes the order of the draws."""
    per_rep = sum(int(np.prod(a.shape)) for a in samples)
    return max(1, min(n_boot, _MAX_CHUNK_ELEMENTS // max(per_rep, 1)))


def _interval(samples: Sequence[np.ndarray], stat: Callable, n_boot: int, level: float, seed: int,
              paired: bool = True, method: str = "percentile") -> tuple[float, float]:
    """The ``level`` interval of ``stat(*samples)`` over ``n_boot`` resamples drawn by
    :func:`scipy.stats.bootstrap` (``paired``: one draw of item indices for all samples).

    scipy resamples the items' *indices*, so a sample may have any shape and ``stat`` keeps this module's
    convention (``stat(x_boot, axis=1)`` on ``(m, n, ...)`` stacks). ``method="percentile"``: the interval
    of :func:`_quantiles` (see the module doc for why); ``"BCa"`` and ``"basic"``: scipy's.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if max(len(a) for a in samples) < 2:   # one item: every resample is that item (scipy refuses such a sample)
        return _quantiles(np.full((1, 1), _estimate(samples, stat)), level)
    vectorised = _accepts_axis(stat)

    def on_indices(*idx, axis=-1):
        parts = [a[i] for a, i in zip(samples, idx * len(samples) if paired else idx)]
        if not vectorised:     # scipy calls it once per replicate, with 1-D indices
            return _scalar(stat(*parts))
        if idx[0].ndim == 1:   # the full sample (BCa's estimate)
            return np.asarray(stat(*parts, axis=0), dtype=float)
        res = np.asarray(stat(*parts, axis=1), dtype=float)
        if res.shape[:1] != idx[0].shape[:1] or res.size != len(idx[0]):
            raise ValueError(f"the statistic returned shape {res.shape} for {len(idx[0])} replicates; "
                             "it must reduce over axis=1 to one number per replicate")
        return res.reshape(-1)

    indices = [np.arange(len(samples[0]))] if paired else [np.arange(len(a)) for a in samples]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateDataWarning)   # NaN replicates: handled by _quantiles
        # scipy's standard error (unused here) of replicates that hold an inf: numpy warns inside np.std
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning, "numpy")
        res = scipy.stats.bootstrap(indices, on_indices, n_resamples=n_boot, batch=_batch(samples, n_boot),
                                    vectorized=vectorised, confidence_level=level, method=method,
                                    rng=np.random.default_rng(seed))
    if method == "percentile":
        return _quantiles(res.bootstrap_distribution, level)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _estimate(arrays: Sequence[np.ndarray], stat: Callable) -> float:
    return _scalar(stat(*arrays, axis=0) if _accepts_axis(stat) else stat(*arrays))


def _as_array(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == bool:
        arr = arr.astype(np.float64)
    if arr.ndim == 0 or len(arr) == 0:
        raise ValueError(f"{name} must be a non-empty array (first axis = items), got shape {arr.shape}")
    return arr


# ----------------------------------------------------------------------------- public CIs

def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0, method: str = "percentile") -> CI:
    """Percentile bootstrap CI of ``stat(values)``, resampling the first axis (images).

    ``values``: array of shape ``(n, ...)`` (booleans are treated as 0/1). ``stat`` reduces along an
    ``axis`` keyword (see the module doc). Returns ``CI(estimate, lo, hi)`` where ``estimate`` is the
    statistic on the full sample. ``method="BCa"``: scipy's bias-corrected and accelerated interval instead.
    """
    x = _as_array(values, "values")
    return CI(_estimate([x], stat), *_interval([x], stat, n_boot, level, seed, method=method))


def paired_bootstrap_ci(a, b, stat_diff: Callable = mean_diff, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0, method: str = "percentile") -> CI:
    """CI of a two-sample statistic of two models evaluated **on the same items**.

    ``a[i]`` and ``b[i]`` belong to the same image ``i``; each replicate draws one set of image indices
    and uses it for both, so the correlation between the models' outcomes is kept (the interval of a
    difference is then much narrower than with independent resampling). ``stat_diff(a, b, axis=...)``
    defaults to :func:`mean_diff` (accuracy difference); :func:`mean_ratio` gives a ratio of
    accuracies, :func:`kappa` Cohen's kappa, :func:`pearson` a correlation. ``method`` as in
    :func:`bootstrap_ci`.
    """
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired samples need the same number of items, got {len(x)} and {len(y)}")
    return CI(_estimate([x, y], stat_diff), *_interval([x, y], stat_diff, n_boot, level, seed, method=method))


def independent_bootstrap_ci(a, b, stat_diff: Callable = mean_diff, n_boot: int = 2000,
                             level: float = 0.95, seed: int = 0) -> CI:
    """Like :func:`paired_bootstrap_ci`, but ``a`` and ``b`` are resampled independently (two models
    evaluated on different items, or to show what pairing buys). ``a`` and ``b`` may differ in length
    (each of at least 2 items)."""
    x, y = _as_array(a, "a"), _as_array(b, "b")
    return CI(_estimate([x, y], stat_diff), *_interval([x, y], stat_diff, n_boot, level, seed, paired=False))


def ratio_ci(num, den, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> CI:
    """CI of ``mean(num) / mean(den)`` with paired resampling, e.g. the share of clean accuracy kept
    under scrambling: ``ratio_ci(correct_scrambled, correct_clean)`` over the same images."""
    return paired_bootstrap_ci(num, den, mean_ratio, n_boot=n_boot, level=level, seed=seed)


def correlation_ci(x, y, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> CI:
    """CI of the Pearson correlation of paired items ``(x[i], y[i])``, resampling items (e.g. the
    class-conditional accuracies of two models, one item per class)."""
    return paired_bootstrap_ci(np.asarray(x, dtype=float), np.asarray(y, dtype=float), pearson,
                               n_boot=n_boot, level=level, seed=seed)


def kappa_ci(a_correct, b_correct, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> CI:
    """Cohen's :func:`kappa` of two correctness vectors over the same images, with a paired bootstrap CI."""
    return paired_bootstrap_ci(np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool), kappa,
                               n_boot=n_boot, level=level, seed=seed)


def grouped_bootstrap_ci(df: pd.DataFrame, group_col: str, fn: Callable[[pd.DataFrame], float],
                         n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> CI:
    """Cluster bootstrap: resample whole groups (e.g. classes) with replacement and apply ``fn``.

    Each replicate draws as many groups as there are, with replacement, and stacks all their rows. In
    the resampled frame ``group_col`` holds the *draw number* (0..G-1), so a class drawn twice counts
    as two classes in a ``groupby(group_col)``; the original label is kept in ``"<group_col>_orig"``.
    ``fn(frame) -> float`` computes the statistic, e.g. the correlation of two models' class-wise
    accuracies. The estimate is ``fn`` on the original frame (with the same two columns, the draw
    number being the group's own index). ``fn`` runs once per replicate, so keep it cheap (a few
    ms: 2000 replicates then take seconds).
    """
    if group_col not in df.columns:
        raise KeyError(f"no column {group_col!r} in the frame")
    codes, labels = pd.factorize(df[group_col], sort=True)
    if (codes < 0).any():
        raise ValueError(f"column {group_col!r} has missing values")
    g = len(labels)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=g))])
    rows = [order[bounds[k]:bounds[k + 1]] for k in range(g)]
    sizes = np.diff(bounds)
    base = df.reset_index(drop=True)
    orig = f"{group_col}_orig"

    def frame(draw: np.ndarray) -> pd.DataFrame:
        idx = np.concatenate([rows[k] for k in draw])
        out = base.iloc[idx].reset_index(drop=True)
        out[orig] = out[group_col].to_numpy()
        out[group_col] = np.repeat(np.arange(len(draw)), sizes[draw])
        return out

    # the items scipy resamples are the groups; fn runs once per replicate on the frame of its draw
    return CI(_scalar(fn(frame(np.arange(g)))),
              *_interval([np.arange(g)], lambda draw: fn(frame(draw)), n_boot, level, seed))


# ----------------------------------------------------------------------------- intervals and formatting

def excludes(lo: float, hi: float, null: float = 0.0) -> bool:
    """True when the interval ``[lo, hi]`` does not contain ``null`` (False for a NaN interval)."""
    if np.isnan(lo) or np.isnan(hi):
        return False
    return bool(null < lo or null > hi)


def fmt_ci(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """``fmt_ci(0.5683, 0.54, 0.5961) == "0.568 [0.540, 0.596]"``."""
    f = lambda v: "nan" if v is None or np.isnan(v) else f"{v:.{digits}f}"  # noqa: E731
    return f"{f(est)} [{f(lo)}, {f(hi)}]"


# ----------------------------------------------------------------------------- derangements

def derangement(n: int, generator=None):
    """A uniformly random permutation of ``range(n)`` without fixed points (``p[i] != i`` for all i).

    Rejection sampling over ``torch.randperm(n, generator=generator)``: a uniform permutation is a
    derangement with probability ~1/e, so about 2.7 draws are needed on average, and the accepted one
    is uniform over derangements. Returns an int64 ``torch.Tensor`` like ``torch.randperm``. Seed it
    the project's way: ``derangement(n, torch.Generator().manual_seed(seed))``. ``n == 1`` has no
    derangement (ValueError); ``n == 0`` gives the empty permutation.
    """
    import torch

    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 1:
        raise ValueError("a single element has no derangement")
    ar = torch.arange(n)
    while True:
        p = torch.randperm(n, generator=generator)
        if not bool((p == ar).any()):
            return p


def is_derangement(perm) -> bool:
    """True when ``perm`` is a permutation of ``range(len(perm))`` with no fixed point."""
    p = np.asarray(perm.tolist() if hasattr(perm, "tolist") else perm).reshape(-1)
    n = len(p)
    if n == 0:
        return True
    if not np.issubdtype(p.dtype, np.integer):
        return False
    if not np.array_equal(np.sort(p), np.arange(n)):
        return False
    return not bool((p == np.arange(n)).any())
