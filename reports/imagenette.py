"""The rendered numbers of make reproduce-imagenette (README headline row, results/README block), read back from
``results/imagenette/`` (the targets table of experiments/imagenette.py, the accuracy and error-overlap parts)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bagnet.io import to_markdown
from bagnet.stats import fmt_ci
from bagnet.verdicts import CANNOT_TEST, CONTRADICTED, NOT_SHOWN, SUPPORTED, emphasis, learned_floor

from .files import ci, load, source
from .verdicts import (additivity_claims, at_chance, bagnet_models, by_interval, claim_counts, combine,
                       sensitivity_claims)

COLUMNS = ["claim", "source", "verdict (95% CI)", "evidence"]


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
                      f"pair's ({v['reference'].iloc[0]}, kappa {v['reference_kappa'].iloc[0]:.3f}), paired over the "
                      "same photos (the claims table of results/README.md reads the BagNet-CNN pairs): " + "; ".join(
                          f"{r['model_a']} vs {r['model_b']} {fmt_ci(r['difference'], r['lo'], r['hi'])}"
                          for _, r in v.iterrows()) + ".", ""]
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
            + f"; targets met: {met}/{len(t)}" + (f" ({'; '.join(missed)})" if missed else "")
            + f"; the paper's claims on these models: {claim_counts(imagenette_claims(root, folder))} "
            "(`results/README.md`, Imagenette2)",
            "–", "`make reproduce-imagenette DATA_ROOT=...`")


def imagenette_claims(root: Path, folder: str = "imagenette") -> list[tuple[str, str, str, str]]:
    """The paper's claims read on the Imagenette models: the ordering by q, scrambling (paired share kept),
    additivity of the CNNs, image-level error consistency against the CNN-CNN pair, and sensitivity; an experiment
    the pipeline did not run gives no rows."""
    has = lambda name: (Path(root) / folder / name / "raw.json").is_file()
    skill = learned_on_test(root, folder) if has("accuracy") else {}
    rows, it = [], None
    if has("additivity"):
        it = load(root, f"{folder}/additivity")[0]["interaction"]
    bagnets = bagnet_models(it) if it is not None else set()
    if has("accuracy"):
        con = load(root, f"{folder}/accuracy")[0].get("contrasts", pd.DataFrame())
        for r in (con[con["metric"] == "top1"] if len(con) else con).itertuples():
            rows.append((f"{r.model} more accurate than {r.minus} (test top-1, paired)", "paper Sec. 3, Fig. 3",
                         at_chance([r.model, r.minus], skill) or by_interval(r.lo, r.hi),
                         f"{r.model} − {r.minus}: {fmt_ci(r.difference, r.lo, r.hi)}"))
    if has("scrambling"):
        rows += scrambling_claims(load(root, f"{folder}/scrambling")[0], it, skill)
    if it is not None:
        rows += additivity_claims(it, skill, [m for m in it["model"].unique() if m not in bagnets])
    if has("error_overlap"):
        rows += kappa_claims(root, folder, bagnets, skill)
    return rows + (sensitivity_claims(root, folder, skill) if has("sensitivity") else [])


def learned_on_test(root: Path, folder: str) -> dict[str, tuple[bool, str]]:
    """Model -> (test top-1 interval above the learned floor, the evidence), from the accuracy experiment (every
    test photo)."""
    t, _ = load(root, f"{folder}/accuracy")
    if "per_class" not in t:      # no class count, no floor: every model is read
        return {}
    floor = learned_floor(1 / t["per_class"]["class"].nunique())
    return {r.model: (r.top1_lo >= floor, f"test top-1 {fmt_ci(r.top1, r.top1_lo, r.top1_hi)} vs floor {floor:.3f}")
            for r in t["accuracy"].itertuples()}


def scrambling_claims(t: dict, interaction: pd.DataFrame | None, skill: dict) -> list[tuple[str, str, str, str]]:
    """Each [BagNet, CNN] contrast: the BagNet keeps more of its clean top-1 (above chance) where its q x q patches
    survive the manipulation (tiles, or texture patches, at least q px; q from the additivity table, else every
    condition is read); the other conditions are shown, not judged."""
    if "contrasts" not in t or not len(t["contrasts"]):
        return []
    tile = {(r.model, r.condition): min(int(v) for v in str(r.tile).split("x")) for r in t["accuracy"].itertuples()
            if str(r.tile) not in ("", "nan")}
    q = ({} if interaction is None else
         {r.model: int(r.exact_zero_from) + 1 for r in interaction.itertuples() if pd.notna(r.exact_zero_from)})
    rows = []
    for (model, minus), g in t["contrasts"].groupby(["model", "minus"], sort=False):
        judged = {r.Index for r in g.itertuples() if tile.get((model, r.condition), 0) >= q.get(model, 0)}
        rows.append((f"scrambling hurts {model} less than {minus} where {model}'s patches survive (share of clean "
                     "top-1 above chance kept, paired)", "paper Sec. 4; report Table 1",
                     at_chance([model, minus], skill) or combine([by_interval(r.lo, r.hi) for r in g.itertuples() if r.Index in judged]),
                     "; ".join(f"{r.condition.replace('scrambled_', '')} {fmt_ci(r.difference, r.lo, r.hi)}"
                               + ("" if r.Index in judged else " (tiles < q: not judged)") for r in g.itertuples())))
    return rows


def kappa_claims(root: Path, folder: str, bagnets: set, skill: dict) -> list[tuple[str, str, str, str]]:
    """Each BagNet-CNN pair's image-level error consistency (Cohen's kappa) against the CNN-CNN reference pair's,
    paired over the same photos: supported when the pair's kappa is above 0 and its difference to the reference's
    reaches 0 (as consistent as two CNNs), contradicted when the difference lies below 0, cannot test without an
    interval. The paper makes the claim for BagNet-33; the other BagNets' rows are its reading on them."""
    t, _ = load(root, f"{folder}/error_overlap")
    if "versus_reference" not in t or "pairs" not in t:
        return []
    kappas = {frozenset((p.model_a, p.model_b)): p for p in t["pairs"].itertuples()}
    rows = []
    for r in t["versus_reference"].itertuples():
        if (r.model_a in bagnets) == (r.model_b in bagnets):     # BagNet-CNN pairs only
            continue
        k = kappas[frozenset((r.model_a, r.model_b))]
        verdict = (f"{CANNOT_TEST} (no interval)" if pd.isna(r.lo) or pd.isna(r.hi) or pd.isna(k.kappa_lo) else
                   emphasis(CONTRADICTED if r.hi < 0 else SUPPORTED if k.kappa_lo > 0 else NOT_SHOWN))
        rows.append((f"{r.model_a} and {r.model_b} err on the same images as much as two CNNs do (error "
                     "consistency, Cohen's kappa)",
                     "paper Sec. 4; Geirhos et al. 2020" if "BagNet-33" in (r.model_a, r.model_b) else
                     "ours (the paper's BagNet-33 claim, on another q)",
                     at_chance([r.model_a, r.model_b], skill) or verdict,
                     f"kappa {fmt_ci(k.kappa, k.kappa_lo, k.kappa_hi)}; minus {r.reference}'s "
                     f"({r.reference_kappa:.3f}): {fmt_ci(r.difference, r.lo, r.hi)}"))
    return rows


def block_imagenette_verdicts(root: Path, folder: str = "imagenette") -> str:
    """results/README: the paper's claims on the Imagenette models, each with its verdict and interval."""
    return to_markdown(pd.DataFrame(imagenette_claims(root, folder), columns=COLUMNS))
