"""The numbers of README.md and results/README.md, rendered from the result files (``make render-results``).

A document holds blocks ``<!-- render: NAME -->`` ... ``<!-- /render -->``; :func:`render_document` replaces
each block's body with ``BLOCKS[NAME](results_root)``. Text outside the blocks may interpret, but carries no
measured number: :func:`unsourced_numbers` finds any, and ``tests/test_readings.py`` fails on them and on a
block that no longer matches its files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from bagnet.identity import experiment_settings
from bagnet.io import read_result, results_files, to_markdown
from bagnet.stats import fmt_ci
from bagnet.verdicts import emphasis, learned_floor, of_check, reading
from experiments import published
from experiments.demo_checks import checks_summary
from experiments.table1 import report_tile_px, tile_columns

from .files import SIGNATURES, TABLE1, ci, fmt_g, load, source
from .imagenette import block_imagenette, block_imagenette_verdicts, imagenette_headline
from .verdicts import block_verdicts, claim_counts, signature_claims

BLOCK = re.compile(r"(<!-- render: ([\w-]+)(?: (\S+))? -->\n)(.*?)(<!-- /render -->)", re.S)


# ------------------------------------------------------------------------------------------------ Table 1
def block_table1(root: Path, folder: str = TABLE1) -> str:
    t, prov = load(root, folder)
    df = t["table1"]
    px = report_tile_px(df)
    rows = []
    for _, r in df.iterrows():
        row = {"model": r["model"], "val": ci(r, "val"), "test": ci(r, "test"),
               "scrambled 4x4": ci(r, "scrambled test"), "kept 4x4": ci(r, "kept")}
        if px:
            scrambled, kept = tile_columns(px)
            row.update({f"scrambled {px} px tiles": ci(r, scrambled), f"kept {px} px tiles": ci(r, kept)})
        pub = [r["report test"], r["report kept"]]
        row["report: test / kept"] = " / ".join("–" if pd.isna(v) else f"{v:.3g}" for v in pub)
        rows.append(row)
    out = [to_markdown(pd.DataFrame(rows)), "",
           f"Top-1 with 95% bootstrap intervals over the {n_images(prov, 'val')} val and "
           f"{n_images(prov, 'test')} test images; kept = scrambled / clean test accuracy (paired interval). "
           + source(prov, folder)]
    if "contrasts" in t:
        c = t["contrasts"]
        c = c.assign(difference=[fmt_ci(a, b, d) for a, b, d in zip(c["difference"], c["lo"], c["hi"])],
                     pair=c["model"] + " − " + c["minus"])
        out += ["", "Differences on the same test images (paired bootstrap 95% CI):", "",
                to_markdown(c.pivot(index="pair", columns="metric", values="difference").reindex(c["pair"].unique())
                   .reset_index())]
    if "seed_spread" in t:
        s = t["seed_spread"]
        s = s.assign(cell=[f"{m:.3f} ± {sd:.3f} ({lo:.3f}–{hi:.3f})" for m, sd, lo, hi in
                           zip(s["mean"], s["sd"], s["min"], s["max"])])
        n = int(s["n_seeds"].min())
        out += ["", f"Seed-to-seed spread ({n} training seeds each; mean ± sd, range):", "",
                to_markdown(s.pivot(index="model", columns="metric", values="cell").reset_index())]
    return "\n".join(out)


def n_images(prov: dict, split: str) -> str:
    ns = {entry["eval"][split]["n"] for entry in prov["raw"].values() if split in entry.get("eval", {})}
    return "/".join(str(n) for n in sorted(ns))


# ------------------------------------------------------------------------------------------------ signatures
def block_signatures(root: Path, folder: str = SIGNATURES) -> str:
    out = []
    t, prov = load(root, f"{folder}/scrambling")
    acc = t["accuracy"]
    clean = acc[acc["condition"] == "clean"].set_index("model")
    acc = acc[acc["condition"] != "clean"].assign(kept=lambda d: [ci(r, "top1_rel") for _, r in d.iterrows()])
    kept = acc.pivot(index="model", columns="condition", values="kept").reindex(acc["model"].unique())
    kept.insert(0, "clean top-1", [ci(clean.loc[m], "top1") for m in kept.index])
    out += [f"**Scrambling** ({int(acc['n'].iloc[0])} test images; clean top-1 and the share of it kept, 95% CI; "
            "tiles permuted by a derangement):", "", to_markdown(kept.reset_index()), "",
            source(prov, f"{folder}/scrambling"), ""]
    t, prov = load(root, f"{folder}/additivity")
    it = t["interaction"]
    far = it[it["bin_lo"] >= 32]
    rows = [{"model": m, "occluder px": int(p),
             "normalised interaction, bins ≥ 32 px": "; ".join(
                 f"{b}: {fmt_g(r.normalized_interaction, r.normalized_interaction_lo, r.normalized_interaction_hi)}"
                 for b, r in zip(g["bin"], g.itertuples())),
             "r joint vs sum": f"{g['pearson_r'].min():.4f}–{g['pearson_r'].max():.4f}",
             "largest interaction from q-1 px apart (logits)": _exact_zero(it, m, p)}
            for (m, p), g in far.groupby(["model", "patch_size"], sort=False)]
    out += [f"**Additivity** ({experiment_settings(prov.get('config', {})).get('additivity', {}).get('occluder')} "
            "occluder; normalised interaction = mean |Δ(A∪B) − Δ(A) − Δ(B)| / mean |Δ(A∪B)|, 95% CI over pairs):",
            "", to_markdown(pd.DataFrame(rows)), "", source(prov, f"{folder}/additivity"), ""]
    t, prov = load(root, f"{folder}/error_overlap")
    p = t["pairs"]
    p = p.assign(pair=p["model_a"] + " ~ " + p["model_b"],
                 **{"class-wise top-5 r": [fmt_ci(a, b, c) for a, b, c in zip(p["r_top5"], p["r_top5_lo"], p["r_top5_hi"])],
                    "class-wise top-1 r": [fmt_ci(a, b, c) for a, b, c in zip(p["r_top1"], p["r_top1_lo"], p["r_top1_hi"])],
                    "kappa": [fmt_ci(a, b, c) for a, b, c in zip(p["kappa"], p["kappa_lo"], p["kappa_hi"])],
                    "both wrong / expected": [f"{v:.2f}" for v in p["both_wrong_ratio"]]})
    out += [f"**Error overlap** ({int(p['n'].iloc[0])} test images; class-wise correlations with 95% CIs over "
            "classes, kappa over images):", "",
            to_markdown(p[["pair", "class-wise top-5 r", "class-wise top-1 r", "kappa", "both wrong / expected"]]), "",
            source(prov, f"{folder}/error_overlap"), ""]
    t, prov = load(root, f"{folder}/sensitivity")
    ld = t["logit_drop"]
    ld = ld.assign(cell=[f"{ci(r, 'auc', 2)} ({r['auc_vs_occlusion']:.2f})" for _, r in ld.iterrows()])
    raw = prov["raw"]
    regions = raw.get("regions") or {}
    out += [f"**Sensitivity** ({int(ld['n_images'].iloc[0])} images, occluder {raw.get('occluder')}; area under "
            "the logit-drop curve with 95% CI, in brackets relative to occlusion; the BagNet row is the control, "
            "scored by its own heatmap):", "",
            to_markdown(ld.pivot(index="method", columns="target", values="cell").reindex(ld["method"].unique())
                        .reset_index()),
            "", (f"Regions of {regions['side_px']} px (from the BagNet's q); {regions['candidates']} candidates, "
                 f"{regions['excluded_padded_only']} border regions scored only from padded patches never masked; "
                 f"up to {regions['masked_up_to']} masked." if regions else
                 "Regions: made before the region geometry was recorded (8 px, border regions included)."),
            "", source(prov, f"{folder}/sensitivity")]
    return "\n".join(out)


def block_signature_models(root: Path, folder: str = SIGNATURES) -> str:
    """The models the signature folders used (their ``provenance.models``), and whether every folder used
    the same checkpoints."""
    parts = sorted(p.parent.name for p in (Path(root) / folder).glob("*/raw.json"))
    recorded = {part: load(root, f"{folder}/{part}")[1].get("models") or {} for part in parts}
    models = next((m for m in recorded.values() if m), {})
    if not models:
        return "(these files predate `provenance.models`)"
    rows = []
    for name, m in models.items():
        top1 = m.get("top1") or {}
        acc = {s: fmt_ci(t["top1"], t["lo"], t["hi"]) + f" (n={t['n']})" if s in top1 else "–"
               for s, t in ((s, top1.get(s)) for s in ("val", "test"))}
        rows.append({"model": name, "val top-1": acc["val"], "test top-1": acc["test"],
                     "epochs": m.get("epochs", "–"), "precision": m.get("precision", "–"),
                     "trained on": f"{m.get('device', '?')}, commit `{str(m.get('git_commit'))[:10]}`",
                     "checkpoint sha256": f"`{str(m.get('sha256'))[:12]}`"})
    sha = lambda ms: {k: v.get("sha256") for k, v in ms.items()}  # noqa: E731
    differ = [part for part, ms in recorded.items() if sha(ms) != sha(models)]
    same = (f"Every folder ({', '.join(parts)}) used these checkpoints." if not differ else
            f"**Other checkpoints in: {', '.join(differ)}.**")
    return (to_markdown(pd.DataFrame(rows))
            + f"\n\nTop-1 on the full val / test splits, 95% bootstrap intervals over images. {same}")


def _exact_zero(it: pd.DataFrame, model: str, p: int) -> str:
    """The largest interaction of ``model`` from its exact-zero distance on (q - 1 px for a BagNet-q;
    ``exact_zero_from`` is NaN for other models, whose cell is then "–")."""
    g = it[(it["model"] == model) & (it["patch_size"] == p)]
    g = g[g["bin_lo"] >= g["exact_zero_from"].astype(float)]
    return f"{g['max_abs_interaction'].max():.1e}" if len(g) else "–"


def sensitivity_verdicts(root: Path, folder: str = SIGNATURES) -> str:
    t, _ = load(root, f"{folder}/sensitivity")
    c = t["comparisons"]
    return "\n".join(f"- {r.target}{' (control)' if r.control else ''}: {getattr(r, 'heatmap', 'bagnet')} minus {r.method} "
                     f"{fmt_ci(r.bagnet_minus_method_auc, r.lo, r.hi, 2)}; the heatmap ranks better: "
                     f"{reading(r.bagnet_minus_method_auc, r.lo, r.hi, expected='greater')}" for r in c.itertuples())


# ------------------------------------------------------------------------------------------------ patch robustness
def _of_pairs(r) -> str:
    """" of K (K + 1) / 2" when the forwards are those that decided the answers (results since the lazy maps)."""
    pairs = getattr(r, "all_pairs", None)
    return "" if pairs is None or pd.isna(pairs) else f" of {int(pairs)}"


def block_patch_robustness(root: Path, folder: str = "patch_robustness/demo") -> str:
    """Certified / clean top-1 of every model and defence on the images every defence ran on (``same_images``
    when PatchCleanser ran on a subset), PatchCleanser's cost, and the certificates PGD broke: ``folder`` and
    its siblings ``folder-*`` (more models on the same data, e.g. ``demo-cnn``)."""
    folders = [folder] + sorted(str(p.relative_to(root)) for p in Path(root).glob(f"{folder}-*") if p.is_dir())
    rows, notes, defences = [], [], []
    for f in folders:
        tables, prov = load(root, f)
        t = tables.get("same_images", tables["patch_robustness"])
        cells = {(r.model, r.patch_px, r.defence, r.metric): r for r in t.itertuples()}
        defences += [d for d in dict.fromkeys(t["defence"]) if d not in defences]
        for (model, p) in dict.fromkeys(zip(t["model"], t["patch_px"])):
            row = {"model": model, "patch px": p}
            for d in dict.fromkeys(t["defence"]):
                c, k = cells.get((model, p, d, "certified")), cells.get((model, p, d, "clean"))
                row[d] = "–" if c is None else f"{fmt_ci(c.top1, c.lo, c.hi, 2)} / {k.top1:.2f}"
            rows.append(row)
        cost = tables.get("cost")
        per_image = ("" if cost is None else " PatchCleanser's cost per image: " + ", ".join(
            f"{r.model} {r.patch_px} px {r.forwards_per_image:.0f}{_of_pairs(r)} forwards {r.seconds_per_image:.1f} s" for r in
            cost.itertuples()) + ".")
        notes.append(f"`{f}/`: {int(t['n'].max())} images.{per_image} Certified images that PGD inside the patch "
                     f"flipped: {prov['raw'].get('certificate_violations', '?')}. " + source(prov, f))
    table = pd.DataFrame(rows, columns=["model", "patch px", *defences]).fillna("–")
    return (to_markdown(table) + "\n\nCertified [95% interval] / clean top-1 on the same test images for every "
            "defence of a model (the undefended model is never certified; – : not a defence of that model).\n\n"
            + "\n\n".join(notes))


# ------------------------------------------------------------------------------------------------ timings, bench
def block_timings(root: Path) -> str:
    rows = []
    for raw in results_files(root):
        prov = read_result(raw).get("provenance") or {}
        rows.append({"folder": f"`{raw.parent.relative_to(root)}/`", "device": prov.get("device", "?"),
                     "commit": f"`{str(prov.get('git_commit'))[:10]}`", "time": str(prov.get("time", "?"))[:16],
                     "wall min": f"{prov.get('wall_s', float('nan')) / 60:.1f}"})
    return to_markdown(pd.DataFrame(rows))


def bench_files(root: Path, bench: str) -> list[dict]:
    """Every machine's ``bench/<machine>/<bench>.json``, newest measurement first."""
    files = [json.loads(p.read_text()) for p in sorted((Path(root) / "bench").glob(f"*/{bench}.json"))]
    return sorted(files, key=lambda d: d["provenance"]["time"], reverse=True)


def bench_line(root: Path, bench: str, keys: Sequence[str], label: Callable[[str], str] = str) -> str:
    """The headline figures ``keys`` of a bench on every machine measured, each with its machine."""
    out = []
    for data in bench_files(root, bench):
        got = [f"{label(k)} {data['headline'][k]}" for k in keys if k in data["headline"]]
        if got:
            machine = data["provenance"]["machine"]["machine"]
            out.append(f"{'; '.join(got)} (`{machine}`, `results/bench/{machine}/{bench}.md`)")
    return " / ".join(out) or "not measured"


def block_bench(root: Path) -> str:
    """The benchmarks' headline figures on every machine measured (bagnet.bench.summary_tables)."""
    from bagnet.bench import summary_tables
    return summary_tables(Path(root) / "bench", link_prefix="results/bench/")


def verdict_counts(root: Path) -> str:
    """How many of the paper's claims tested on the signatures got each verdict (results/README.md lists them)."""
    return (f"the paper's claims, tested here: {claim_counts(signature_claims(root, SIGNATURES))} "
            "(`results/README.md`: each claim with its interval, and why a claim cannot be tested)")

# ------------------------------------------------------------------------------------------------ README.md
SCENE15_CLASSES = 15


def table1_label(prov: dict) -> str:
    """What the committed Table 1 is, from its config: which recipe trained the models."""
    cfg = prov.get("config") or {}
    recipe = ("the from-scratch recipe of `configs/init/scratch.yaml`" if (cfg.get("trainer") or {}).get(
        "schedule") != "plateau_halving" else "the report's fine-tuning protocol")
    return (f"15-Scene Table 1 on the {cfg.get('profile_name', '?')} profile, **from scratch**, trained by {recipe} "
            "(the report fine-tuned ImageNet-pretrained models; `results/table1/cpu-scratch/`)")


def weak_note(df: pd.DataFrame, classes: int = SCENE15_CLASSES) -> str:
    """Which models' test intervals reach below the learned floor (:func:`reports.verdicts.learned_floor`, the
    one floor of every reading: a share kept is inflated near chance)."""
    floor = learned_floor(1 / classes)
    weak = [m for m in df.index if df.loc[m, "test_lo"] < floor]
    if not weak:
        return f"Every model's test interval lies above the learned floor {floor:.2f}."
    return (f"Below the learned floor {floor:.2f} at the lower end of the test interval: {', '.join(weak)}; near "
            "chance a share kept is inflated: read `results/README.md` before these numbers.")


def seeds_note(root, main_seed=0) -> str:
    """' (seed 0; seed 1: 4/4 ... held; ...)': the demo repeated with other seeds (make demo-seeds)."""
    seeds = []
    for f in sorted((Path(root) / "demo").glob("seed*/accuracy/checks.csv")):
        _, prov = load(root, f"demo/{f.parent.parent.name}/accuracy")
        seeds.append(f"seed {prov['seed']}: " + checks_summary(pd.read_csv(f).to_dict(orient="records")))
    return f" (seed {main_seed}; {'; '.join(seeds)})" if seeds else ""


def block_headline(root: Path) -> str:
    demo = pd.read_csv(Path(root) / "demo" / "accuracy" / "checks.csv")
    _, dprov = load(root, "demo/accuracy")
    t, tprov = load(root, TABLE1)
    df, px = t["table1"].set_index("model"), report_tile_px(t["table1"])
    con = t["contrasts"].set_index(["model", "minus", "metric"]) if "contrasts" in t else None
    tests = ", ".join(f"{m} {ci(df.loc[m], 'test')}" for m in df.index)
    grids = [("kept", "scrambled test", "at the report's 4x4 grid")] + (   # every grid, none picked
        [(tile_columns(px)[1], tile_columns(px)[0], f"with the report's tile size ({px} px tiles)")] if px else [])
    kept = " ".join(
        f"Share of clean accuracy kept {where}: " + "; ".join(
            f"{m} {ci(df.loc[m], k)} (scrambled top-1 {ci(df.loc[m], s)})" for m in ("BagNet-33", "ResNet-50"))
        + (f" (BagNet-33 minus ResNet-50: {reading(*con.loc[('BagNet-33', 'ResNet-50', k), ['difference', 'lo', 'hi']])})."
           if con is not None
           else ".") for k, s, where in grids)
    runtime, paper = published.section("runtime"), published.section("imagenet")
    heat = bench_line(root, "heatmap", [f"q={q}: dense vs authors' routine, release forward" for q in (33, 17, 9)]
                      + ["q=9: dense GFLOP/s / conv reference"],
                      lambda k: k.split(":")[0] + (" dense GFLOP/s / measured conv GFLOP/s" if "GFLOP" in k else ""))
    train = bench_line(root, "train", [f"BagNet-33 / ResNet-50 train time, 224 px {p}" for p in ("fp32", "bf16")],
                       lambda k: k.rsplit(" ", 1)[-1])
    rows = [
        ("demo (synthetic): the expected effects and their negative controls, each judged by its interval",
         f"{checks_summary(demo.to_dict(orient='records'))}{seeds_note(root, dprov.get('seed', 0))}: " + "; ".join(
             f"{emphasis(of_check(h))}: {e.split(':')[0].split('(')[0].strip()} ({m})"
             for e, m, h in zip(demo["effect"], demo["measured"], demo["holds"])), "–", "`make demo`"),
        (table1_label(tprov),
         f"test top-1 {tests}. {kept} {weak_note(df)}",
         "test " + ", ".join(f"{m} {df.loc[m, 'report test']:.3g}" for m in df.index)
         + f"; kept when scrambled: BagNet-33 {df.loc['BagNet-33', 'report kept']:.2f}, ResNet-50 "
         f"{df.loc['ResNet-50', 'report kept']:.2f}", "`make reproduce-table1 INIT=scratch`"),
        ("15-Scene signatures on the Table 1 models of the from-scratch recipe (seed 0) and a VGG-16-BN "
         "trained alike",
         verdict_counts(root),
         "VGG-16 nearly additive beyond ~30 px; BagNet heatmaps predict DenseNet-169's sensitivity better than "
         "DeepLift (ImageNet, pretrained)", "`make signatures INIT=scratch`"),
        ("exact BagNet-q heatmap of a 224 px image: dense method's speed-up over the authors' patch-wise routine "
         "(same process; median [min, max] of interleaved rounds)", heat, "–", "`python scripts/bench_heatmap.py`"),
        ("BagNet-33 / ResNet-50 training time per image, 224 px, full width", train,
         f"~{runtime['BagNet-33 / ResNet-50 (GPU)']['ratio']:g}x (GPU)", "`python scripts/bench_train.py`"),
        ("ImageNet top-5 with the authors' weights", "not run: no weights or ImageNet offline",
         f"BagNet-33 {percent(paper['BagNet-33']['top5']):g}%, BagNet-17 {percent(paper['BagNet-17']['top5']):g}%",
         "`make eval-imagenet IMAGENET_ROOT=...`"),
    ]
    if (Path(root) / "imagenette" / "raw.json").is_file():   # once make reproduce-imagenette has run
        rows.insert(2, imagenette_headline(root))
    table = to_markdown(pd.DataFrame(rows, columns=["what", "measured", "paper / report", "command"]))
    return (table + "\n\nDemo: " + source(dprov, "demo/accuracy")[8:] + " Table 1: " + source(tprov, TABLE1)[8:])


BLOCKS: dict[str, Callable[..., str]] = {   # name -> f(results root[, folder under it])
    "headline": block_headline, "table1": block_table1, "signatures": block_signatures,
    "sensitivity-verdicts": sensitivity_verdicts, "timings": block_timings, "verdicts": block_verdicts,
    "signature-models": block_signature_models, "bench": block_bench,
    "patch-robustness": block_patch_robustness, "imagenette": block_imagenette,
    "imagenette-verdicts": block_imagenette_verdicts,
}


def render_document(text: str, root: Path) -> str:
    """``text`` with every render block's body replaced by its block function's output."""
    def fill(m: re.Match) -> str:
        if m.group(2) not in BLOCKS:
            raise KeyError(f"unknown render block '{m.group(2)}'; known: {', '.join(BLOCKS)}")
        args = [m.group(3)] if m.group(3) else []
        return m.group(1) + BLOCKS[m.group(2)](Path(root), *args).rstrip() + "\n" + m.group(5)
    return BLOCK.sub(fill, text)


# ------------------------------------------------------------------------------------------------ the check
MEASURED = re.compile(
    r"(?<![\w.\-/])(\d+(?:\.\d+)?(?:%|x\b|×|\s?(?:min|minutes?|s|seconds?|ms|h|hours?|GB|MB)\b)"
    r"|\d*\.\d+(?!\.\d))")
VERSION = re.compile(r"\b\d+\.\d+(?:\.\d+)+\b|(?:Python|hydra-core|omegaconf|pytorchcv|arXiv) \d+\.\d+\S*"
                     r"|\b95% (?=CI|interval|bootstrap|confidence)")   # versions, ids, the intervals' level
STRIP = re.compile(r"```.*?```|`[^`\n]*`|<!--.*?-->|\]\([^)]*\)", re.S)


def percent(fraction: float) -> float:
    return round(fraction * 100, 10)   # 0.876 -> 87.6, not 87.60000000000001


def published_values() -> set[str]:
    """Every published number (experiments/published.yaml) as prose may quote it: in its unit and as a
    percentage / fraction of it, to 0-4 decimals."""
    vals = set()
    for x, unit in published.numbers():
        forms = {x, percent(x)} if unit == "fraction" else {x, x / 100} if unit == "percent" else {x}
        vals |= {f"{v:{fmt}}" for v in forms for fmt in ("g", ".1f", ".2f", ".3f", ".4f")}
    return vals


def unsourced_numbers(text: str) -> list[tuple[int, str]]:
    """(line number, text) of every measured-looking number outside render blocks, code, comments and
    link targets that is not a published number (:func:`published_values`) or a version."""
    body = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    body = STRIP.sub(lambda m: "\n" * m.group(0).count("\n"), body)
    body = VERSION.sub("", body)
    allowed = published_values()
    found = []
    for n, line in enumerate(body.splitlines(), start=1):
        for m in MEASURED.finditer(line):
            number = re.match(r"\d*\.?\d+", m.group(0)).group(0)
            if number not in allowed:
                found.append((n, line.strip()[:120]))
                break
    return found
