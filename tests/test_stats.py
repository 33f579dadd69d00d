"""bagnet.stats: bootstrap intervals behave like intervals (coverage, width, pairing), kappa matches
hand-computed values, derangements are derangements and uniform, everything is seeded."""
from collections import Counter
from itertools import permutations

import numpy as np
import pandas as pd
import pytest
import torch

from bagnet import stats, verdicts


# ----------------------------------------------------------------------------- bootstrap_ci

def test_bootstrap_ci_coverage_bernoulli():
    # 200 repetitions of n=300 Bernoulli(0.6): a 95% interval must cover p in roughly 95% of them
    p, n, reps = 0.6, 300, 200
    data = np.random.default_rng(123).random((reps, n)) < p
    covered = 0
    for r in range(reps):
        est, lo, hi = stats.bootstrap_ci(data[r], n_boot=1000, seed=r)
        assert lo <= est <= hi
        covered += lo <= p <= hi
    assert 0.88 <= covered / reps <= 0.99, covered / reps


def test_bootstrap_ci_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(0)
    widths = {}
    for n in (100, 400, 1600):
        _, lo, hi = stats.bootstrap_ci(rng.random(n) < 0.6, n_boot=2000, seed=1)
        widths[n] = hi - lo
        # and close to the normal-theory width 2 * 1.96 * sqrt(p(1-p)/n)
        assert widths[n] == pytest.approx(2 * 1.96 * np.sqrt(0.24 / n), rel=0.25)
    assert 1.6 <= widths[100] / widths[400] <= 2.4
    assert 3.2 <= widths[100] / widths[1600] <= 4.8


def test_bootstrap_ci_level_and_degenerate_cases():
    x = np.random.default_rng(0).normal(size=500)
    _, lo90, hi90 = stats.bootstrap_ci(x, level=0.90)
    _, lo99, hi99 = stats.bootstrap_ci(x, level=0.99)
    assert lo99 < lo90 < hi90 < hi99
    assert tuple(stats.bootstrap_ci(np.ones(50))) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError):
        stats.bootstrap_ci(x, level=1.5)


def test_bootstrap_ci_is_seeded_and_vectorised_path_matches_loop():
    x = np.random.default_rng(5).random(200) < 0.5
    a = stats.bootstrap_ci(x, seed=7)
    assert a == stats.bootstrap_ci(x, seed=7)
    assert a != stats.bootstrap_ci(x, seed=8)
    # a statistic without an axis keyword runs once per replicate on the same resamples
    assert stats.bootstrap_ci(x, lambda v: v.mean(), n_boot=300, seed=7) == \
        stats.bootstrap_ci(x, np.mean, n_boot=300, seed=7)
    med = stats.bootstrap_ci(np.arange(101.0), np.median, n_boot=500)
    assert med.estimate == 50.0 and med.lo < 50 < med.hi


def test_intervals_are_those_the_committed_results_were_computed_with():
    # numbers of the all-numpy bootstrap before scipy drew the resamples: bit for bit, also past one chunk
    rng = np.random.default_rng(0)
    a, b = rng.random(12000) < 0.6, rng.random(12000) < 0.55
    assert tuple(stats.bootstrap_ci(a[:500], seed=0)) == (0.566, 0.524, 0.61)
    assert tuple(stats.paired_bootstrap_ci(a, b, seed=1)) == (0.054749999999999965, 0.042081250000000035,
                                                             0.06717083333333335)


def test_bca_interval_is_scipys():
    x = np.random.default_rng(0).exponential(size=200)     # skewed: BCa moves the interval up
    pct, bca = stats.bootstrap_ci(x, seed=0), stats.bootstrap_ci(x, seed=0, method="BCa")
    assert pct.estimate == bca.estimate and bca.lo < bca.estimate < bca.hi
    assert bca.lo > pct.lo and bca.hi > pct.hi


def test_ci_result_is_a_tuple_and_formats():
    ci = stats.bootstrap_ci(np.random.default_rng(0).random(100))
    est, lo, hi = ci
    assert (est, lo, hi) == (ci.estimate, ci.lo, ci.hi)
    assert str(ci) == stats.fmt_ci(est, lo, hi)
    assert stats.fmt_ci(0.5683, 0.54, 0.5961) == "0.568 [0.540, 0.596]"
    assert stats.fmt_ci(1.0, 0.9, 1.0, digits=2) == "1.00 [0.90, 1.00]"
    assert stats.fmt_ci(0.5, float("nan"), float("nan")) == "0.500 [nan, nan]"


# ----------------------------------------------------------------------------- paired / ratio

def _correlated_pair(n, p=0.6, flip=0.1, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(n) < p
    b = a.copy()
    f = rng.random(n) < flip
    b[f] = ~b[f]
    return a, b


def test_paired_ci_of_difference_is_narrower_than_unpaired():
    a, b = _correlated_pair(500)
    assert np.corrcoef(a, b)[0, 1] > 0.5
    paired = stats.paired_bootstrap_ci(a, b, seed=3)
    unpaired = stats.independent_bootstrap_ci(a, b, seed=3)
    assert paired.estimate == pytest.approx(a.mean() - b.mean())
    assert paired.estimate == unpaired.estimate
    assert (paired.hi - paired.lo) < 0.6 * (unpaired.hi - unpaired.lo)
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci(a, b[:-1])


def test_paired_difference_coverage():
    # true difference 0.05 between two correlated models on the same images
    rng = np.random.default_rng(11)
    n, reps, covered = 400, 100, 0
    for r in range(reps):
        u = rng.random(n)
        a, b = u < 0.65, u < 0.60          # same images, nested errors: strongly paired
        lo, hi = stats.paired_bootstrap_ci(a, b, n_boot=800, seed=r)[1:]
        covered += lo <= 0.05 <= hi
    assert 0.85 <= covered / reps <= 1.0


def test_ratio_ci_share_kept():
    rng = np.random.default_rng(2)
    clean = rng.random(300) < 0.6
    scrambled = clean & (rng.random(300) < 0.7)   # keeps ~70% of the clean hits
    est, lo, hi = stats.ratio_ci(scrambled, clean, seed=0)
    assert est == pytest.approx(scrambled.mean() / clean.mean())
    assert lo < est < hi and lo > 0.55 and hi < 0.85
    assert tuple(stats.ratio_ci(clean, clean)) == (1.0, 1.0, 1.0)
    # a zero denominator gives NaN, not a crash
    assert np.isnan(stats.mean_ratio(np.ones(3), np.zeros(3)))


# ----------------------------------------------------------------------------- correlation / grouped

def test_correlation_ci():
    rng = np.random.default_rng(4)
    x = rng.normal(size=400)
    y = 0.5 * x + np.sqrt(1 - 0.25) * rng.normal(size=400)   # rho = 0.5
    est, lo, hi = stats.correlation_ci(x, y, seed=0)
    assert est == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert lo < 0.5 < hi and lo > 0.3 and hi < 0.7
    assert stats.excludes(lo, hi, 0.0)
    assert np.isnan(stats.pearson(np.ones(5), np.arange(5.0)))


def _class_frame(seed=0, classes=15, per_class=40, spread=0.15):
    """Image-level correctness of two models whose class-wise accuracies share a class effect."""
    rng = np.random.default_rng(seed)
    base = np.clip(0.6 + spread * rng.normal(size=classes), 0.05, 0.95)
    rows = []
    for c in range(classes):
        rows.append(pd.DataFrame({"label": f"class{c:02d}",
                                  "a": rng.random(per_class) < base[c],
                                  "b": rng.random(per_class) < np.clip(base[c] - 0.05, 0, 1)}))
    return pd.concat(rows, ignore_index=True)


def test_grouped_bootstrap_resamples_whole_groups():
    df = _class_frame()
    seen = []

    def fn(d):
        # a class drawn twice counts as two classes; the original label is kept
        seen.append((d["label"].nunique(), set(d["label_orig"]) <= set(df["label"])))
        return d["a"].mean()

    est, lo, hi = stats.grouped_bootstrap_ci(df, "label", fn, n_boot=200, seed=0)
    assert est == pytest.approx(df["a"].mean())
    assert all(k == 15 and ok for k, ok in seen)
    # class-level variation: resampling classes gives a wider interval than resampling images
    _, ilo, ihi = stats.bootstrap_ci(df["a"].to_numpy(), seed=0)
    assert (hi - lo) > 1.3 * (ihi - ilo)
    assert stats.grouped_bootstrap_ci(df, "label", fn, n_boot=200, seed=0) == (est, lo, hi)


def test_grouped_bootstrap_classwise_correlation():
    df = _class_frame(seed=1)

    def classwise_corr(d):
        acc = d.groupby("label")[["a", "b"]].mean()
        return stats.pearson(acc["a"].to_numpy(), acc["b"].to_numpy())

    acc = df.groupby("label")[["a", "b"]].mean()
    est, lo, hi = stats.grouped_bootstrap_ci(df, "label", classwise_corr, n_boot=300, seed=0)
    assert est == pytest.approx(np.corrcoef(acc["a"], acc["b"])[0, 1])
    assert lo <= est <= hi and lo > 0       # the shared class effect is detected
    with pytest.raises(KeyError):
        stats.grouped_bootstrap_ci(df, "nope", classwise_corr)


# ----------------------------------------------------------------------------- kappa

def _from_table(both, a_only, b_only, neither):
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, dtype=bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, dtype=bool)
    return a, b


def test_kappa_hand_computed():
    # both right 20, only A 5, only B 10, both wrong 15 (n=50):
    # p_o = 35/50 = 0.7, p_a = 0.5, p_b = 0.6, p_e = 0.5*0.6 + 0.5*0.4 = 0.5 -> kappa = 0.2/0.5 = 0.4
    assert stats.kappa(*_from_table(20, 5, 10, 15)) == pytest.approx(0.4)
    # 40 / 10 / 5 / 45 (n=100): p_o = 0.85, p_a = 0.5, p_b = 0.45, p_e = 0.5 -> kappa = 0.7
    assert stats.kappa(*_from_table(40, 10, 5, 45)) == pytest.approx(0.7)
    # 2x2 with p_e != 0.5: 3 / 1 / 1 / 1 (n=6): p_o = 4/6, p_a = p_b = 4/6, p_e = 16/36 + 4/36 = 20/36
    # kappa = (24/36 - 20/36) / (16/36) = 0.25
    assert stats.kappa(*_from_table(3, 1, 1, 1)) == pytest.approx(0.25)


def test_kappa_limits():
    a = np.random.default_rng(0).random(1000) < 0.7
    assert stats.kappa(a, a) == 1.0                       # perfect agreement
    half = np.arange(1000) % 2 == 0
    assert stats.kappa(half, ~half) == pytest.approx(-1)  # perfect disagreement at 50%
    rng = np.random.default_rng(1)
    x, y = rng.random(20000) < 0.7, rng.random(20000) < 0.6
    assert abs(stats.kappa(x, y)) < 0.03                  # independent errors
    ones = np.ones(10, dtype=bool)
    assert stats.kappa(ones, ones) == 1.0                 # both constant and equal
    assert stats.kappa(ones, ~ones) == 0.0                # always right vs always wrong: p_e = 0, p_o = 0
    with pytest.raises(ValueError):
        stats.kappa(ones, ones[:5])


def test_kappa_vectorised_and_ci():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 50, 80)) < 0.6
    k = stats.kappa(a, b, axis=1)
    assert k.shape == (50,)
    assert np.allclose(k, [stats.kappa(a[i], b[i]) for i in range(50)])
    x, y = _correlated_pair(600, flip=0.15)
    est, lo, hi = stats.kappa_ci(x, y, seed=0)
    assert est == stats.kappa(x, y)
    assert 0 < lo < est < hi < 1
    assert verdicts.reading(est, lo, hi, 0.0, "greater") == "supported (95% CI excludes 0)"


# ----------------------------------------------------------------------------- excludes / verdicts

def test_excludes():
    assert stats.excludes(0.1, 0.3, 0.0)
    assert stats.excludes(-0.3, -0.1, 0.0)
    assert not stats.excludes(-0.1, 0.3, 0.0)
    assert not stats.excludes(0.0, 0.3, 0.0)          # touching the null is not excluding it
    assert not stats.excludes(float("nan"), 0.3, 0.0)
    assert stats.excludes(0.2, 0.4, 0.5)


def test_the_one_verdict_vocabulary():
    """Every reading of an interval is one of four words; two-sided: a difference supported or not shown."""
    r = verdicts.reading
    assert r(0.2, 0.1, 0.3, 0.0) == "supported (95% CI excludes 0)"
    assert r(0.1, -0.1, 0.3, 0.0) == "not shown (95% CI includes 0)"
    assert r(0.1, -0.1, 0.3, 0.0, "greater") == "not shown (95% CI includes 0)"
    assert r(0.1, 0.0, 0.3, 0.0, "greater").startswith("not shown")       # touching the null is not excluding it
    assert r(-0.2, -0.3, -0.1, 0.0, "greater") == "contradicted (95% CI excludes 0 on the other side)"
    assert r(-0.2, -0.3, -0.1, 0.0, "less") == "supported (95% CI excludes 0)"
    assert r(-0.2, -0.3, -0.1, 0.0) == "supported (95% CI excludes 0)"    # two-sided: a difference
    assert r(0.9, 0.8, 0.95, 1.0, level=0.9) == "supported (90% CI excludes 1)"
    assert r(0.5, float("nan"), float("nan"), 0.0) == "cannot test (no CI)"
    with pytest.raises(ValueError):
        r(0.1, 0.0, 0.2, 0.0, "up")
    assert [verdicts.of_check(h) for h in (True, False, None, float("nan"), np.bool_(True))] == [
        "supported", "contradicted", "cannot test", "cannot test", "supported"]
    assert verdicts.word("**contradicted** (95% CI ...)") == "contradicted"
    assert verdicts.combine(["supported", "**supported**"]) == "supported"
    assert verdicts.combine(["supported", "not shown (95% CI includes 0)", "cannot test"]) == "not shown"
    assert verdicts.combine(["not shown", "**contradicted**"]) == "contradicted"
    assert verdicts.combine([]) == "cannot test"                # no interval at all is no evidence
    assert verdicts.emphasis("supported (95% CI excludes 0)") == "**supported** (95% CI excludes 0)"
    assert verdicts.emphasis("not shown") == "not shown"
    with pytest.raises(ValueError):
        verdicts.word("present")                      # the old words are gone
    assert verdicts.learned_floor(1 / 15) == 0.25 and verdicts.learned_floor(1 / 7) == pytest.approx(3 / 7)


# ----------------------------------------------------------------------------- derangements

def test_derangement_has_no_fixed_points():
    g = torch.Generator().manual_seed(0)
    for n in list(range(2, 40)) + [300]:
        for _ in range(5):
            p = stats.derangement(n, g)
            assert p.dtype == torch.int64 and p.shape == (n,)
            assert sorted(p.tolist()) == list(range(n))
            assert not (p == torch.arange(n)).any()
            assert stats.is_derangement(p)
    assert stats.derangement(2, g).tolist() == [1, 0]
    assert stats.derangement(0, g).tolist() == []
    with pytest.raises(ValueError):
        stats.derangement(1, g)


def test_derangements_of_4_are_all_reached_uniformly():
    all_der = {p for p in permutations(range(4)) if all(p[i] != i for i in range(4))}
    assert len(all_der) == 9
    g = torch.Generator().manual_seed(1)
    draws = 9000
    counts = Counter(tuple(stats.derangement(4, g).tolist()) for _ in range(draws))
    assert set(counts) == all_der
    expected = draws / 9
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 26.12            # chi-square, 8 dof, p = 0.001
    assert all(abs(c - expected) < 0.15 * expected for c in counts.values())


def test_derangement_is_seeded():
    a = stats.derangement(50, torch.Generator().manual_seed(3))
    b = stats.derangement(50, torch.Generator().manual_seed(3))
    c = stats.derangement(50, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_is_derangement():
    assert stats.is_derangement([1, 0])
    assert stats.is_derangement(np.array([1, 2, 0]))
    assert stats.is_derangement(torch.tensor([2, 0, 1]))
    assert not stats.is_derangement([0, 2, 1])      # fixed point 0
    assert not stats.is_derangement([1, 1, 0])      # not a permutation
    assert not stats.is_derangement([1, 2, 3])      # not of range(3)
    assert not stats.is_derangement([1.0, 0.0])     # not integers
    assert stats.is_derangement([])


def test_kept_share_above_chance_credits_no_model_for_falling_to_chance():
    """Both models fall to chance (0.1) when scrambled: the plain share kept favours the less accurate one (it had
    less to lose), the share above chance is 0 for both."""
    from bagnet.stats import kept_share_diff
    n = 100
    scrambled = (np.arange(n) % 10 == 0).astype(float)                  # 10% correct: chance over 10 classes
    a = np.stack([scrambled, np.ones(n)], axis=1)                         # clean 1.0
    b = np.stack([scrambled, (np.arange(n) % 2 == 0).astype(float)], axis=1)   # clean 0.5
    assert kept_share_diff(a, b) == pytest.approx(0.1 - 0.2)
    assert kept_share_diff(a, b, chance=0.1) == pytest.approx(0.0)
