"""The paper's and the report's claims, each with the verdict that the cpu-scale result files give and the
interval behind it (``<!-- render: verdicts -->`` in results/README.md).

Verdicts are the suite's one vocabulary (:mod:`bagnet.verdicts`: supported / contradicted / not shown /
cannot test, and "check passed" / "check failed" for rows that hold by construction), read with its thresholds
(learned floor, the instrument's control, "nearly additive", the float32 zero), each defined there with its
reason. Error overlap is judged against the CNN-CNN reference it displays (the paper's reading: a BagNet errs
on the same classes *as much as CNNs do among themselves*), on top-1 and on top-5: supported when the
BagNet-CNN correlation is above 0 and its interval reaches the lowest CNN-CNN correlation, contradicted when
its interval lies below every CNN-CNN correlation.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bagnet.io import to_markdown
from bagnet.stats import fmt_ci
from bagnet.verdicts import (
    CANNOT_TEST,
    CHECK_FAILED,
    CHECK_PASSED,
    CONTRADICTED,
    CONTROL_PASS,
    FLOAT32_ZERO,
    NEARLY_ADDITIVE,
    NOT_SHOWN,
    SUPPORTED,
    WORDS,
    emphasis,
    learned_floor,
    word,
)
from bagnet.verdicts import by_interval as _by_interval
from bagnet.verdicts import combine as _combine
from experiments.table1 import report_tile_px, tile_columns

from .files import SIGNATURES, TABLE1, load

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "deeplift")


def by_interval(lo: float, hi: float, expected: str = "greater") -> str:
    """The vocabulary's word for an effect expected above 0 (``greater``) or below, in the README's emphasis."""
    w = _by_interval(lo, hi, expected=expected)
    return emphasis(w) if w != CANNOT_TEST else f"{CANNOT_TEST} (no interval)"


def combine(verdicts: list[str]) -> str:
    w = _combine(verdicts)
    return emphasis(w) if w != CANNOT_TEST else f"{CANNOT_TEST} (no interval)"


def learned(root: Path, folder: str) -> dict[str, tuple[bool, str]]:
    """Model -> (clean test top-1 CI above :func:`learned_floor`, "clean top-1 0.071 [0.043, 0.100] vs floor
    0.250"), from the signatures' scrambling table (its clean rows) and the error-overlap table's classes."""
    acc = load(root, f"{folder}/scrambling")[0]["accuracy"]
    floor = learned_floor(1 / load(root, f"{folder}/error_overlap")[0]["per_class"]["class"].nunique())
    return {r.model: (r.top1_lo >= floor, f"clean top-1 {fmt_ci(r.top1, r.top1_lo, r.top1_hi)} vs floor {floor:.3f}")
            for r in acc[acc["condition"] == "clean"].itertuples()}


def at_chance(models: list[str], skill: dict[str, tuple[bool, str]]) -> str | None:
    """'cannot test (...)' naming the models of ``models`` below the learned floor; None when all learned."""
    weak = [f"{m} {skill[m][1]}" for m in models if m in skill and not skill[m][0]]
    return f"cannot test (below the learned floor: {'; '.join(weak)})" if weak else None


def against_reference(lo: float, hi: float, reference: float) -> str:
    """The error-overlap rule (module doc): above 0 and reaching the lowest CNN-CNN correlation."""
    if pd.isna(lo) or pd.isna(hi) or pd.isna(reference):
        return f"{CANNOT_TEST} (no interval or no CNN-CNN reference)"
    if hi < reference:
        return emphasis(CONTRADICTED)
    return emphasis(SUPPORTED) if lo > 0 else NOT_SHOWN


def diff(c: pd.DataFrame, model: str, minus: str, metric: str) -> tuple[str, str]:
    r = c[(c["model"] == model) & (c["minus"] == minus) & (c["metric"] == metric)].iloc[0]
    return (f"{model} − {minus} {metric}: {fmt_ci(r['difference'], r['lo'], r['hi'])}",
            by_interval(r["lo"], r["hi"]))


def table1_claims(root: Path, folder: str) -> list[tuple[str, str, str, str]]:
    t, _ = load(root, folder)
    c, df = t["contrasts"], t["table1"].set_index("model")
    rows = []
    q = [diff(c, "BagNet-17", "BagNet-9", "test"), diff(c, "BagNet-33", "BagNet-17", "test")]
    rows.append(("accuracy rises with the patch size q", "paper Sec. 3; report Table 1",
                 combine([v for _, v in q]), "; ".join(e for e, _ in q)))
    px = report_tile_px(t["table1"])
    for metric, grid in (("kept", "the report's 4x4 grid"),
                         *[(m, "the report's tile size in pixels") for m in c["metric"].unique()
                           if px and m == tile_columns(px)[1]]):
        e, v = diff(c, "BagNet-33", "ResNet-50", metric)
        rows.append((f"scrambling hurts BagNet-33 less than ResNet-50 ({grid}; share of clean accuracy kept)",
                     "report Table 1", v, e))
    b = df.loc["BagNet-33"]
    rows.append(("the report's accuracies (fine-tuned ImageNet models)", "report Table 1",
                 "cannot test (ours train from scratch at 112 px, the report fine-tuned pretrained models at 224 px)",
                 f"BagNet-33 test {fmt_ci(b['test'], b['test_lo'], b['test_hi'])} vs the report's "
                 f"{b['report test']:g}"))
    if "seed_spread" in t:
        s = t["seed_spread"]
        s = s[s["metric"] == "test"]
        rows.append(("(not a claim) how much the seed moves test accuracy (it draws the initialisation, the data "
                     "order, the train/val split and the test subset)", "ours", "–", "; ".join(
            f"{r.model} sd {r.sd:.3f} over {r.n_seeds} seeds, range {r.min:.3f}–{r.max:.3f}"
            for r in s.itertuples())))
    return rows


def bagnet_models(interaction: pd.DataFrame) -> set[str]:
    """The BagNets of a signatures folder: the models that its additivity table gives an exact-zero distance
    (``exact_zero_from``, from :func:`bagnet.models.is_bagnet`; the error-overlap tables, made from
    predictions alone, do not know which model is which)."""
    return set(interaction.loc[interaction["exact_zero_from"].astype(float).notna(), "model"])


def signature_claims(root: Path, folder: str) -> list[tuple[str, str, str, str]]:
    skill = learned(root, folder)
    it = load(root, f"{folder}/additivity")[0]["interaction"]
    return (additivity_claims(it, skill, ("VGG-16", "DenseNet-169")) + class_overlap_claims(root, folder, it, skill)
            + sensitivity_claims(root, folder, skill))


def additivity_claims(it: pd.DataFrame, skill: dict, cnns) -> list[tuple[str, str, str, str]]:
    """The implementation check (no interaction beyond q - 1 px in a BagNet-q) and, for each of ``cnns`` in the
    table, the paper's VGG-16 reading: image parts at least 32 px apart nearly additive."""
    far = it[it["bin_lo"] >= it["exact_zero_from"].astype(float)]   # q - 1 px for a BagNet-q, NaN for a CNN
    largest = far["max_abs_interaction"].max()
    rows = [("(implementation check) a BagNet-q's image parts do not interact beyond q − 1 px",
             "paper Sec. 4 (by construction)", CHECK_PASSED if largest < FLOAT32_ZERO else emphasis(CHECK_FAILED),
             f"largest interaction of BagNet-9/17/33 at ≥ q − 1 px: {largest:.1e} logits (float32 zero: "
             f"< {FLOAT32_ZERO:g})")]
    for model in cnns:
        g = it[(it["model"] == model) & (it["bin_lo"] >= 32)]
        if not len(g):
            continue
        lo, hi = g["normalized_interaction_lo"].min(), g["normalized_interaction_hi"].max()
        v = at_chance([model], skill) or (
            emphasis(SUPPORTED) if hi < NEARLY_ADDITIVE else emphasis(CONTRADICTED) if lo >= NEARLY_ADDITIVE
            else NOT_SHOWN)
        rows.append((f"{model}: image parts ≥ 32 px apart nearly additive (interaction < {NEARLY_ADDITIVE:g} of "
                     "the joint effect)", "paper Sec. 4 (VGG-16)", v,
                     f"normalised interaction, bins ≥ 32 px: {g['normalized_interaction'].min():.3g}–"
                     f"{g['normalized_interaction'].max():.3g}, 95% CIs within [{lo:.3g}, {hi:.3g}]"))
    return rows


def class_overlap_claims(root: Path, folder: str, it: pd.DataFrame, skill: dict) -> list[tuple[str, str, str, str]]:
    """BagNet-33 errs on the same classes as each CNN, as much as CNNs among themselves (class-wise r)."""
    rows = []
    t, _ = load(root, f"{folder}/error_overlap")
    p, bagnets = t["pairs"], bagnet_models(it)
    bag = p[(p["model_a"] == "BagNet-33") & ~p["model_b"].isin(bagnets)]
    cnn = p[~p["model_a"].isin(bagnets) & ~p["model_b"].isin(bagnets)]
    for r in bag.itertuples():   # one row per CNN: the paper's figure pairs BagNet-33 with one CNN at a time
        others = cnn[(cnn["model_a"] != r.model_b) & (cnn["model_b"] != r.model_b)]
        per_metric, evidence = [], []
        for m in ("top1", "top5"):
            ref = others[f"r_{m}"].min() if len(others) else float("nan")
            lo, hi, est = getattr(r, f"r_{m}_lo"), getattr(r, f"r_{m}_hi"), getattr(r, f"r_{m}")
            per_metric.append(against_reference(lo, hi, ref))
            evidence.append(f"{m} r {fmt_ci(est, lo, hi)} vs CNN-CNN {ref:.2f}–{others[f'r_{m}'].max():.2f}"
                            if len(others) else f"{m} r {fmt_ci(est, lo, hi)}")
        rows.append((f"BagNet-33 errs on the same classes as {r.model_b}, as much as CNNs among themselves "
                     "(class-wise top-1 and top-5 accuracy correlated)", "paper Sec. 4",
                     at_chance(["BagNet-33", r.model_b], skill) or combine(per_metric), "; ".join(evidence)))
    return rows


def sensitivity_claims(root: Path, folder: str, skill: dict) -> list[tuple[str, str, str, str]]:
    """Each target's occlusion sensitivity predicted by the BagNet's heatmap better than by gradient attributions,
    read only where the ranking passes its control (the BagNet's heatmap scored on the BagNet itself)."""
    rows = []
    t, prov = load(root, f"{folder}/sensitivity")
    ld, comp = t["logit_drop"], t["comparisons"]
    bag_name = prov["raw"].get("bagnet", "BagNet-33")
    ctrl = ld[(ld["target"] == bag_name)].set_index("method")["auc_vs_occlusion"]
    region = (prov["raw"].get("regions") or {}).get("side_px", prov["raw"].get("region"))
    control = (f"control, {bag_name} scored on itself: its heatmap reaches {ctrl.get('bagnet', float('nan')):.2f} "
               f"of occlusion's AUC (pass: {CONTROL_PASS:g}; regions {region} px)")
    heats = comp["heatmap"].unique() if "heatmap" in comp else ["bagnet"]
    for target in [x for x in ld["target"].unique() if x != bag_name]:
        for heat in heats:
            cmp = comp[(comp["target"] == target) & comp["method"].isin(GRADIENT_METHODS)]
            cmp = cmp[cmp["heatmap"] == heat] if "heatmap" in cmp else cmp
            own = ctrl.get(heat, float("nan"))
            v = (at_chance([bag_name, target], skill) or
                 (f"cannot test (this ranking fails its control: {own:.2f} of occlusion on its own BagNet, "
                  f"below {CONTROL_PASS:g})" if not own >= CONTROL_PASS else
                  combine([by_interval(r.lo, r.hi) for r in cmp.itertuples()])))
            rows.append((f"{bag_name}'s heatmap predicts {target}'s occlusion sensitivity better than "
                         "gradient attributions", "paper Sec. 4 (DenseNet-169)", v,
                         "; ".join(f"minus {r.method} {fmt_ci(r.bagnet_minus_method_auc, r.lo, r.hi, 2)}"
                                   for r in cmp.itertuples()) + f"; {control}"))
    return rows


def claim_counts(rows: list[tuple[str, str, str, str]]) -> str:
    """'supported 3, contradicted 1, not shown 3, cannot test 3; implementation checks (...) passed 1'."""
    got = pd.Series([word(v) for _, _, v, _ in rows], dtype=object)
    return (", ".join(f"{v} {(got == v).sum()}" for v in WORDS) + "; implementation checks (true by construction, "
            f"not counted) passed {(got == 'check passed').sum()}")


def block_verdicts(root: Path, table1: str = TABLE1, signatures: str = SIGNATURES) -> str:
    rows = table1_claims(root, table1) + signature_claims(root, signatures)
    return to_markdown(pd.DataFrame(rows, columns=["claim", "source", "verdict (95% CI)", "evidence"]))
