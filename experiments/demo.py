"""make demo's report: BagNet-9/17/33 and a small CNN trained on the synthetic probe, every experiment run on
their test split (configs/experiment/demo.yaml, a pipeline), then this: accuracy per class kind, whether
each effect the probe is built to show appeared (with its negative control) and the README."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bagnet import io
from bagnet.result import Result
from bagnet.stats import fmt_ci
from bagnet.verdicts import CANNOT_TEST, CONTRADICTED, SUPPORTED, of_check, reading

from .demo_checks import chance_images_needed, checks_summary, demo_checks
from .registry import register_report


@register_report("demo")
def report(ctx, result: Result, trained: dict) -> Result:
    """The demo's document: accuracy per class kind, each expected effect with its negative control (the
    checks), one measured sentence per signature, and the README."""
    cfg, d = ctx.cfg, ctx.cfg.demo
    runs = {label: Path(sub.cfg.run_dir) for label, (sub, _) in trained.items()}
    # the trainings' own wall time: a demo that reuses trained runs says what it did not redo
    train_s = {label: s.get("train_wall_s") for label, (_, s) in trained.items()}
    data = ctx.data
    preds = {k: pd.read_csv(r / "eval" / "predictions_test.csv.gz") for k, r in runs.items()}
    acc = kind_accuracy(preds, data.classes, data.info.get("class_kinds", {}))
    parts = {"accuracy": Result(tables={"accuracy": acc}, raw={"train_wall_s": train_s},
                                summary="accuracy per class kind"), **result.parts}
    q = max(int(trained[b][0].cfg.model.patch_size) for b in d.bagnets)
    checks = demo_checks(preds, data.classes, data.info.get("class_kinds", {}), parts["scrambling"].tables["accuracy"],
                         list(d.bagnets), d.cnn, seed=cfg.seed,
                         by_group=parts["scrambling"].tables.get("accuracy_by_group"),
                         grid=intact_patch_grid(cfg.experiments.scrambling.grids, data.image_size, q),
                         logit_drop=parts["sensitivity"].tables.get("logit_drop"))
    acc_part = parts["accuracy"]
    acc_part.tables["checks"] = pd.DataFrame(checks)
    findings = demo_findings(parts, list(d.bagnets), d.cnn)
    return Result(tables=result.tables, raw=result.raw, parts=parts, summary=checks_summary(checks),
                  readme=lambda prov: demo_readme(checks, prov["wall_s"], prov, cfg, findings,
                                                  seed_spread(cfg.out_dir, acc_part.tables, cfg.seed,
                                                              prov["wall_s"]), train_s))


def kind_accuracy(predictions: dict[str, pd.DataFrame], classes: list[str], kinds: dict[str, str]) -> pd.DataFrame:
    """Top-1 per model and class kind; for pair kinds also the accuracy *within the pair* (chance 0.5):
    among images of the pair's classes predicted as one of them, the fraction predicted correctly."""
    rows = []
    for name, df in predictions.items():
        row = {"model": name, "all": float((df["pred"] == df["label"]).mean())}
        for kind in dict.fromkeys(kinds.values()):
            ids = [i for i, c in enumerate(classes) if kinds.get(c) == kind]
            sub = df[df["label"].isin(ids)]
            row[kind] = float((sub["pred"] == sub["label"]).mean()) if len(sub) else float("nan")
            if kind in ("mid", "global") and len(ids) >= 2:
                inpair = sub[sub["pred"].isin(ids)]
                row[f"{kind}_within_pair"] = float((inpair["pred"] == inpair["label"]).mean()) if len(inpair) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def intact_patch_grid(grids, image_size: int, q: int) -> int:
    """The finest scrambling grid whose tiles are at least q px: every BagNet-q keeps most patches intact
    (tiles smaller than q leave none, which would test tile size rather than bag-of-features behaviour)."""
    ok = [g for g in grids if image_size // g >= q]
    return max(ok) if ok else min(grids)


DEMO_OUTPUTS = {
    "accuracy": "top-1 per model and class kind (local / mid / global); `*_within_pair` = accuracy inside "
                "a pair of classes made of the same parts (chance 0.5)",
    "scrambling": "signature 1: accuracy on clean, g x g tile-scrambled and texturised test images",
    "additivity": "signature 2: interaction of two occluded patches vs their distance (exactly 0 for "
                  "BagNet-q beyond q-1 px), for random pairs and for pairs on two known parts (`interaction_parts`)",
    "error_overlap": "signature 3: class-wise accuracy correlation, shared errors and Cohen's kappa per model pair",
    "sensitivity": "signature 4: logit drop when occluding the regions ranked first by the BagNet-33 heatmap, "
                   "by captum attributions of the CNN itself, by occlusion (upper reference) and at random",
    "heatmaps": "exact BagNet-9/17/33 heatmaps of the true class on the same test images",
    "patches": "per class, BagNet-33's most predictive patches and the strongest distractors",
}


def demo_findings(results: dict[str, Result], bagnets: list[str], cnn: str) -> list[str]:
    """One measured sentence per signature, read off the result tables (nothing here is fixed in advance)."""
    lines = []
    inter = results["additivity"].tables["interaction"]
    if len(inter):
        far = inter[inter["bin_lo"] >= inter.groupby("model")["exact_zero_from"].transform("max").fillna(float("inf"))]
        bag_far = far[far["model"].isin(bagnets)]["max_abs_interaction"].max()
        cnn_rows = inter[inter["model"] == cnn]
        line = (f"Additivity: for patches farther apart than q-1 px the largest BagNet interaction is "
                f"{bag_far:.2g} (float32 rounding; exactly 0 in exact arithmetic); the CNN's normalised "
                f"interaction is {cnn_rows['normalized_interaction'].min():.2g} to "
                f"{cnn_rows['normalized_interaction'].max():.2g} across distance bins (random pairs)")
        parts = results["additivity"].tables.get("interaction_parts", pd.DataFrame())
        on_parts = parts[parts["model"] == cnn] if len(parts) else parts
        if len(on_parts):
            line += (f"; with the two occluders on two known parts it is "
                     f"{on_parts['normalized_interaction'].min():.2g} to {on_parts['normalized_interaction'].max():.2g}")
        lines.append(line + ".")
    scr = results["scrambling"].tables["accuracy"]
    intact = scr[scr["condition"] == "scrambled_2x2"]
    if len(intact):
        lines.append("Scrambling, every test image: share of clean top-1 kept at 2x2 tiles: " + ", ".join(
            f"{r.model} {fmt_ci(r.top1_rel, r.top1_rel_lo, r.top1_rel_hi)}" for r in intact.itertuples())
            + " (a BagNet loses top-1 on the global images when the moved parts sit where fewer of its windows "
              "cover them; `accuracy_by_group` has each group).")
    pairs = results["error_overlap"].tables["pairs"]
    if len(pairs):
        bag = pairs[pairs["model_a"].isin(bagnets) & pairs["model_b"].isin(bagnets)]
        with_cnn = pairs[(pairs["model_a"] == cnn) | (pairs["model_b"] == cnn)]
        cnn_err = float(with_cnn["err_a"].where(with_cnn["model_a"] == cnn, with_cnn["err_b"]).max())
        line = ("Error overlap: both-wrong rate relative to independent errors, BagNet pairs: "
                + ", ".join(f"{r.model_a}~{r.model_b} {r.both_wrong_ratio:.1f}x" for r in bag.itertuples()))
        if cnn_err > 0:
            line += "; with the " + cnn + ": " + ", ".join(
                f"{r.model_a}~{r.model_b} {r.both_wrong_ratio:.1f}x" for r in with_cnn.itertuples())
        line += f" (the {cnn} errs on {cnn_err:.1%} of the test images)."
        lines.append(line)
    sens = results["sensitivity"].tables["logit_drop"]
    comp = results["sensitivity"].tables.get("comparisons", pd.DataFrame())
    if len(sens):
        for target, sub in sens.groupby("target", sort=False):
            rel = sub.set_index("method")["auc_vs_occlusion"]
            role = "control: the BagNet scored by its own heatmap" if sub["control"].any() else "target"
            verdicts = comp[comp["target"] == target] if len(comp) else comp
            said = "; ".join(f"{r.heatmap + ' ' if 'heatmap' in verdicts else ''}better than {r.method}: "
                             f"{reading(r.bagnet_minus_method_auc, r.lo, r.hi, expected='greater')}, AUC "
                             f"difference {fmt_ci(r.bagnet_minus_method_auc, r.lo, r.hi)}"
                             for r in verdicts.itertuples()) if len(verdicts) else "no paired comparison"
            lines.append(f"Sensitivity ({target}, {role}): area under the logit-drop curve relative to occlusion: "
                         + ", ".join(f"{m} {v:.2f}" for m, v in rel.items()) + f". BagNet heatmap {said}.")
    return lines


def demo_readme(checks: list[dict], wall_s: float, prov: dict, cfg: DictConfig,
                findings: list[str] | None = None, spread: list[str] | None = None,
                train_s: dict | None = None) -> str:
    lines = ["# Demo: BagNets vs a CNN on the synthetic probe", "",
             f"Made by `make demo` ({wall_s / 60:.1f} min{_trained(train_s, wall_s)} on {prov['device']}, commit "
             f"`{prov['git_commit']}`, "
             f"{prov['time']}). Data: {cfg.data.image_size} px synthetic images, "
             f"{cfg.data.samples_per_class} training images per class; models: BagNet-9/17/33 of width "
             f"{cfg.bagnet_width} and a small CNN whose receptive field covers the image; "
             f"{_epochs(cfg)}. Classes and their ground truth: `bagnet/data/synthetic.py`.", "",
             "## Did the expected effects appear?", "",
             f"{checks_summary(checks)}. Each effect is followed by its negative control: a place where the same "
             "instrument must not find the effect.", "",
             "| check | what must hold | measured | verdict |", "|---|---|---|---|"]
    said = {SUPPORTED: "supported", CONTRADICTED: "**contradicted**",
            CANNOT_TEST: f"cannot test (fewer than {chance_images_needed()} images)"}
    lines += [f"| {c.get('kind', 'effect')} | {c['effect']} | {c['measured']} | {said[of_check(c['holds'])]} |"
              for c in checks]
    if spread:
        lines += [""] + spread
    if findings:
        lines += ["", "## Other measurements", ""] + [f"- {f}" for f in findings]
    lines += ["", "## Outputs", "", "| folder | shows |", "|---|---|"]
    lines += [f"| `{k}/` | {v} |" for k, v in DEMO_OUTPUTS.items()]
    lines += ["", "Each folder holds its tables (`.csv` + `.md`), figures (`.png` + `.pdf`) and `raw.json` "
              "(numbers + provenance: config, commit, versions, device, seed, time).", ""]
    return "\n".join(lines)


def _trained(train_s: dict | None, wall_s: float) -> str:
    """'; its trainings, reused from an earlier run, took 9.6 min' when they are not part of this wall time."""
    train = [v for v in (train_s or {}).values() if v]
    return (f"; its trainings, reused from an earlier run, took {sum(train) / 60:.1f} min"
            if train and sum(train) > wall_s else "")


def _epochs(cfg: DictConfig) -> str:
    """'5 epochs each' or '5 epochs (CNN: 10)': the demo's models may override the trainer's epochs."""
    models = cfg.pipeline.train if "pipeline" in cfg else cfg.demo.models      # results made before the pipeline
    own = {k: (v.get("trainer") or {}).get("epochs") for k, v in models.items() if isinstance(v, DictConfig)}
    own = {k: e for k, e in own.items() if e is not None and e != cfg.trainer.epochs}
    return f"{cfg.trainer.epochs} epochs" + (f" ({', '.join(f'{k}: {e}' for k, e in own.items())})" if own else " each")


SEED_DIRS = "seed*"   # results/demo/seed1, seed2, ...: the same demo with other seeds (make demo-seeds)


def seed_spread(out: str | Path, tables: dict[str, pd.DataFrame] | None = None, seed: int | None = None,
                wall_s: float = float("nan")) -> list[str]:
    """Markdown lines: every check and accuracy per model and class kind across the demo in ``out`` (seed
    ``seed``, its ``tables`` 'checks' and 'accuracy', made in ``wall_s``) and the demos with other seeds in
    ``out/seed*/``; [] when there are none."""
    out = Path(out)
    runs, walls = {}, {}
    for raw in sorted(out.glob(f"{SEED_DIRS}/accuracy/raw.json")):
        blob = io.read_result(raw)
        k = int(blob["provenance"]["seed"])
        runs[k] = {n: pd.DataFrame(t) for n, t in blob["tables"].items()}
        walls[k] = blob["provenance"].get("wall_s", float("nan"))
    if not runs:
        return []
    if tables is not None and seed is not None:
        runs[int(seed)], walls[int(seed)] = tables, wall_s
    seeds = sorted(runs)
    held = [f"seed {k}: {checks_summary(runs[k]['checks'].to_dict(orient='records'))} ({walls[k] / 60:.1f} min)"
            for k in seeds]
    others = [k for k in seeds if k != seed]
    lines = ["## Across seeds", "",
             f"This demo is seed {seed}; the same demo with seed{'s' if len(others) > 1 else ''} "
             f"{', '.join(map(str, others))} is in `seed<k>/` (`make demo-seeds`). " + "; ".join(held) + ".", "",
             "| check | " + " | ".join(f"seed {k}" for k in seeds) + " |", "|---|" + "---|" * len(seeds)]
    said = {SUPPORTED: "supported", CONTRADICTED: "**contradicted**", CANNOT_TEST: "cannot test"}
    first = runs[seeds[0]]["checks"]
    for i, row in first.iterrows():
        cells = []
        for k in seeds:
            c = runs[k]["checks"]
            cells.append(f"{said[of_check(c.iloc[i]['holds'])]}: {c.iloc[i]['measured']}" if i < len(c) else "–")
        lines.append(f"| {row.get('kind', 'effect')}: {row['effect'].split('(')[0].strip()} | " + " | ".join(cells) + " |")
    accs = [runs[k]["accuracy"].assign(seed=k) for k in seeds if len(runs[k]["accuracy"])]
    if accs:
        acc = pd.concat(accs)
        cols = [c for c in acc.columns if c not in ("model", "seed")]
        lines += ["", "Test top-1 per class kind across seeds: mean (min to max).", "",
                  "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for model, sub in acc.groupby("model", sort=False):
            lines.append(f"| {model} | " + " | ".join(f"{sub[c].mean():.3f} ({sub[c].min():.3f} to {sub[c].max():.3f})"
                                                       for c in cols) + " |")
    return lines


def rebuild_demo_readme(out: str | Path) -> str | None:
    """The README.md of a finished demo, rebuilt from its raw.json files (scripts/render_results.py)."""
    out = Path(out)
    blobs = {p.parent.name: io.read_result(p) for p in out.glob("*/raw.json")}
    if "accuracy" not in blobs:
        return None
    prov = blobs["accuracy"]["provenance"]
    cfg = OmegaConf.create(prov["config"])
    results = {k: Result(tables={n: pd.DataFrame(t) for n, t in (b.get("tables") or {}).items()})
               for k, b in blobs.items()}
    checks = results["accuracy"].tables["checks"].to_dict(orient="records")
    findings = demo_findings(results, list(cfg.demo.bagnets), cfg.demo.cnn)
    spread = seed_spread(out, results["accuracy"].tables, prov.get("seed", cfg.get("seed")),
                         prov.get("wall_s", float("nan")))
    return demo_readme(checks, prov.get("wall_s", float("nan")), prov, cfg, findings, spread,
                       (blobs["accuracy"].get("raw") or {}).get("train_wall_s"))


