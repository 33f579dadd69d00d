"""The demo's checks: each effect the synthetic probe is built to show, its negative control, and the
sensitivity instrument's control, each judged by its interval (used by experiments/demo.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from bagnet.stats import CI, bootstrap_ci, fmt_ci, paired_bootstrap_ci
from bagnet.verdicts import CONTROL_PASS, SUPPORTED, UNHURT_FLOOR, of_check


def _correct(df: pd.DataFrame, ids: list[int] | None = None, within: bool = False) -> np.ndarray:
    """Per-image top-1 correctness; ``ids``: only images of these classes; ``within``: only those
    predicted as one of ``ids`` (accuracy inside a pair, chance 0.5)."""
    if ids is not None:
        df = df[df["label"].isin(ids)]
        if within:
            df = df[df["pred"].isin(ids)]
    df = df.sort_values("index")
    return (df["pred"] == df["label"]).to_numpy(float)


def _boot(x: np.ndarray, seed: int) -> CI:
    nan = float("nan")
    return bootstrap_ci(x, seed=seed) if len(x) else CI(nan, nan, nan)


# The checks' thresholds, each with its reason (the global pair holds ~100 test images per model):
CHANCE_MARGIN = 0.2   # "at chance": the 90% CI (two one-sided 5% tests) of the within-pair accuracy inside
                      # 0.5 +- 0.2; a blind model passes with probability >= 0.95 from n = (1.645 + 1.96)^2 / (4 m^2)
                      # = 82 images (normal approximation), fewer images: "cannot test"
SOLVED_FLOOR = 0.75   # "solves it": 95% CI lower bound above 0.75; a model at 0.90 passes with probability > 0.99
                      # at n >= 80 (its CI half-width ~0.066)
TIE_MARGIN = 0.05     # "tie": a paired difference within 5 pt, the smallest gap the ~350 (local: ~150) test images
                      # resolve (95% CI half-width of a paired difference near 0.03)
# UNHURT_FLOOR (negative control of scrambling) and CONTROL_PASS (the instrument's): bagnet.verdicts


def chance_images_needed(margin: float = CHANCE_MARGIN) -> int:
    return int(np.ceil((1.645 + 1.96) ** 2 / (4 * margin ** 2)))


def equivalent_to_chance(x: np.ndarray, seed: int) -> tuple[bool | None, CI]:
    """Equivalence test (TOST) of a within-pair accuracy with 0.5: (holds, or None when too few images; the 90% CI)."""
    ci = bootstrap_ci(x, seed=seed, level=0.90) if len(x) else CI(float("nan"), float("nan"), float("nan"))
    if len(x) < chance_images_needed():
        return None, ci
    return bool(0.5 - CHANCE_MARGIN <= ci.lo and ci.hi <= 0.5 + CHANCE_MARGIN), ci


def _in_pair(df: pd.DataFrame, ids: list[int]) -> np.ndarray:
    """Per image of the classes ``ids``: 1 if predicted as one of them (the model sees the pair's parts)."""
    df = df[df["label"].isin(ids)].sort_values("index")
    return df["pred"].isin(ids).to_numpy(float)


def demo_checks(preds: dict[str, pd.DataFrame], classes: list[str], kinds: dict[str, str], scrambling: pd.DataFrame,
                bagnets: list[str], cnn: str, grid: int = 4, seed: int = 0,
                by_group: pd.DataFrame | None = None, logit_drop: pd.DataFrame | None = None) -> list[dict]:
    """The effects the synthetic probe is built to show, each followed by its negative control (a place where
    the same instrument must *not* find the effect). Each states its margin; it holds only when the 95%
    bootstrap intervals (over test images) say so, not the point estimates alone."""
    checks = []

    def check(kind: str, effect: str, measured: str, holds) -> None:
        checks.append({"kind": kind, "effect": effect, "measured": measured, "holds": holds})

    ids = {k: [i for i, c in enumerate(classes) if kinds.get(c) == k] for k in ("local", "mid", "global")}
    small, large = bagnets[0], bagnets[-1]
    # 1. accuracy rises with q: paired differences on the same test images, on the classes some BagNet can
    # solve (every BagNet guesses within the global pair: those coin flips would only widen the intervals)
    solvable = ids["local"] + ids["mid"] or None
    d1 = paired_bootstrap_ci(_correct(preds[bagnets[1]], solvable), _correct(preds[bagnets[0]], solvable), seed=seed)
    d2 = paired_bootstrap_ci(_correct(preds[bagnets[2]], solvable), _correct(preds[bagnets[1]], solvable), seed=seed)
    check("effect", f"test accuracy on the local and mid classes rises with q: {bagnets[1]} - {bagnets[0]} > 0, and "
                    f"{bagnets[2]} - {bagnets[1]} > -{TIE_MARGIN:g} (both by their 95% CI: the second allows a "
                    f"{TIE_MARGIN * 100:g} pt margin, as 17 and 33 should tie)",
          f"{bagnets[1]} - {bagnets[0]} {fmt_ci(*d1)}; {bagnets[2]} - {bagnets[1]} {fmt_ci(*d2)}",
          bool(d1.lo > 0 and d2.lo > -TIE_MARGIN))
    if ids["local"]:
        dl = paired_bootstrap_ci(_correct(preds[large], ids["local"]), _correct(preds[small], ids["local"]), seed=seed)
        # one-sided: the effect controlled is a rise; a larger q a little below the smaller on the local classes
        # (seed 0: BagNet-33 3 pt below BagNet-9) is not that effect
        check("negative control", f"...but not on the local classes, which need no large patch: {large} - {small} "
                                  f"there below +{TIE_MARGIN:g} (95% CI upper bound)",
              f"{large} - {small} {fmt_ci(*dl)}", bool(dl.hi < TIE_MARGIN))
    if len(ids["global"]) >= 2:
        blind = {b: equivalent_to_chance(_correct(preds[b], ids["global"], within=True), seed) for b in bagnets}
        g = _boot(_correct(preds[cnn], ids["global"], within=True), seed)
        check("effect", f"global-arrangement pair at chance for every BagNet (equivalence test: 90% CI of the "
                        f"within-pair accuracy inside 0.5 ± {CHANCE_MARGIN:g}), solved by the {cnn} (95% CI above "
                        f"{SOLVED_FLOOR:g})",
              ", ".join(f"{b} {fmt_ci(*ci)} (90%)" for b, (_, ci) in blind.items()) + f", {cnn} {fmt_ci(*g)}",
              bool(all(h for h, _ in blind.values()) and g.lo > SOLVED_FLOOR)
              if all(h is not None for h, _ in blind.values()) else None)
        seen = {b: _boot(_in_pair(preds[b], ids["global"]), seed) for b in bagnets}
        check("negative control", "...but every BagNet sees the global parts: it puts the global images into the "
                                  f"global pair (share, 95% CI above {SOLVED_FLOOR:g})",
              ", ".join(f"{b} {fmt_ci(*ci)}" for b, ci in seen.items()),
              bool(all(ci.lo > SOLVED_FLOOR for ci in seen.values())))
    if len(ids["mid"]) >= 2:
        held, m9 = equivalent_to_chance(_correct(preds[small], ids["mid"], within=True), seed)
        m33 = _boot(_correct(preds[large], ids["mid"], within=True), seed)
        check("effect", f"mid-size pair: {small} at chance (equivalence test, 90% CI inside 0.5 ± "
                        f"{CHANCE_MARGIN:g}), {large} solves it (95% CI above {SOLVED_FLOOR:g})",
              f"{small} {fmt_ci(*m9)} (90%), {large} {fmt_ci(*m33)}",
              bool(held and m33.lo > SOLVED_FLOOR) if held is not None else None)
        seen9 = _boot(_in_pair(preds[small], ids["mid"]), seed)
        check("negative control", f"...but {small} sees the dots: it puts the mid images into the mid pair "
                                  f"(share, 95% CI above {SOLVED_FLOOR:g})",
              f"{small} {fmt_ci(*seen9)}", bool(seen9.lo > SOLVED_FLOOR))
    cond = f"scrambled_{grid}x{grid}"
    groups = by_group if by_group is not None and len(by_group) else pd.DataFrame(columns=["group", "condition"])
    fmt = lambda t, m, c: fmt_ci(t.at[m, c], t.at[m, f"{c}_lo"], t.at[m, f"{c}_hi"])  # noqa: E731
    if "global" in set(groups["group"]):
        # on the global pair, the decision between its two classes (argmax among them): only a model that used the
        # arrangement can lose it. (Scrambled top-1 there also moves when BagNet-33's windows see the moved parts
        # from the border, where fewer windows cover them: that is coverage, not arrangement.)
        glo = groups[(groups["group"] == "global") & (groups["condition"] == cond)].set_index("model")
        check("effect", f"{grid}x{grid} scrambling (tiles no smaller than the largest patch; it splits the global "
                        f"triangle) hurts the {cnn} within the global pair more than every BagNet (share of the clean "
                        f"within-pair accuracy kept, argmax among the pair's classes; the {cnn}'s 95% CI below every "
                        "BagNet's)",
              ", ".join(f"{m} {fmt(glo, m, 'within_rel')}" for m in bagnets + [cnn] if m in glo.index),
              bool(cnn in glo.index and all(b in glo.index and glo.at[cnn, "within_rel_hi"] < glo.at[b, "within_rel_lo"]
                                            for b in bagnets)))
    else:   # no groups: the share of top-1 kept on every image
        s = scrambling[scrambling["condition"] == cond].set_index("model")
        check("effect", f"{grid}x{grid} scrambling (tiles no smaller than the largest patch) hurts the {cnn} more than "
                        f"every BagNet (share of clean top-1 kept; the {cnn}'s CI below every BagNet's)",
              ", ".join(f"{m} {fmt(s, m, 'top1_rel')}" for m in bagnets + [cnn] if m in s.index),
              bool(cnn in s.index and all(s.at[cnn, "top1_rel_hi"] < s.at[b, "top1_rel_lo"] for b in bagnets if b in s.index)))
    if "local" in set(groups["group"]):
        loc = groups[(groups["group"] == "local") & (groups["condition"] == cond)].set_index("model")
        check("negative control", f"...but {grid}x{grid} scrambling does not hurt any BagNet on the local classes "
                                  f"(share of clean top-1 kept, 95% CI lower bound at least {UNHURT_FLOOR:g})",
              ", ".join(f"{b} {fmt(loc, b, 'top1_rel')}" for b in bagnets if b in loc.index),
              bool(all(b in loc.index and loc.at[b, "top1_rel_lo"] >= UNHURT_FLOOR for b in bagnets)))
    if logit_drop is not None and len(logit_drop) and logit_drop["control"].any():
        ctrl = logit_drop[logit_drop["control"]]
        own = ctrl.set_index("method")
        target = ctrl["target"].iloc[0]
        value = float(own.at["bagnet", "auc_vs_occlusion"]) if "bagnet" in own.index else float("nan")
        check("instrument control", f"the sensitivity instrument finds known evidence: the {target} heatmap's "
                                    f"ranking, scored on {target} itself, reaches {CONTROL_PASS:g} of occlusion's AUC",
              f"{value:.2f} of occlusion (AUC {fmt_ci(own.at['bagnet', 'auc'], own.at['bagnet', 'auc_lo'], own.at['bagnet', 'auc_hi'])}"
              f" vs {fmt_ci(own.at['occlusion', 'auc'], own.at['occlusion', 'auc_lo'], own.at['occlusion', 'auc_hi'])})"
              if "occlusion" in own.index and "bagnet" in own.index else "not measured",
              bool(value >= CONTROL_PASS) if value == value else None)
    return checks


def checks_summary(checks: list[dict]) -> str:
    """'4/4 expected effects, 4/4 negative controls and 1/1 instrument controls held'."""
    kinds = list(dict.fromkeys(c.get("kind", "effect") for c in checks))
    said = [f"{sum(of_check(c['holds']) == SUPPORTED for c in rows)}/{len(rows)} {CHECK_KINDS.get(k, k + 's')}"
            for k in kinds for rows in [[c for c in checks if c.get("kind", "effect") == k]]]
    return (", ".join(said[:-1]) + " and " + said[-1] if len(said) > 1 else "".join(said)) + " held"


CHECK_KINDS = {"effect": "expected effects", "negative control": "negative controls",
               "instrument control": "instrument controls"}
