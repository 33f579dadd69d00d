"""make reproduce-imagenette's report: the targets of the Imagenette pipeline read off its result tables, and the
README of ``results/imagenette/``.

The pipeline itself is a config (configs/experiment/imagenette.yaml): the models trained from scratch on Imagenette2,
then accuracy, error overlap, scrambling, additivity, sensitivity, heatmaps and patches on its test split. The
targets (a benchmark, not a test; the ``imagenette:`` block of the config) are:

* ``top1``: a model's test top-1 at least a threshold (``met``: the estimate reaches it; the reading: its 95%
  interval against the threshold);
* ``order``: the paper's ordering as a chain, e.g. ``BagNet-9 < BagNet-17 <= BagNet-33 < ResNet-50``, each link
  read on the accuracy experiment's paired contrast (``<``: the interval of the difference excludes 0 above;
  ``<=``: it does not exclude 0 below);
* the sensitivity instrument's control: the heatmap BagNet scored on itself reaches
  :data:`bagnet.verdicts.CONTROL_PASS` of occlusion's AUC.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from bagnet import io
from bagnet.config import as_dict
from bagnet.errors import ConfigError
from bagnet.result import Result
from bagnet.stats import fmt_ci
from bagnet.verdicts import CANNOT_TEST, CONTRADICTED, CONTROL_PASS, SUPPORTED, by_interval

from .registry import register_report

WHAT = {"accuracy": "top-1/top-5 per model with 95% intervals; the paper's ordering as paired contrasts; top-1 per class",
        "error_overlap": "class-wise correlation, shared errors and Cohen's kappa of every pair, against the CNN-CNN pair",
        "scrambling": "signature 1: accuracy on clean, g x g tile-scrambled and texturised test photos",
        "additivity": "signature 2: interaction of two occluded patches vs their distance",
        "sensitivity": "signature 4: logit drop when occluding the regions each method ranks first (BagNet-33's "
                       "heatmap vs captum attributions of the CNN itself vs occlusion vs random)",
        "heatmaps": "BagNet heatmaps of test photos of every class, true and predicted class names",
        "patches": "per class, the most predictive patches and the strongest distractors"}


def check(cfg) -> None:
    """Before anything trains: the targets' chain parses and names models of the pipeline."""
    settings = as_dict(cfg.get("imagenette") or {})
    labels = {*cfg.pipeline.train, *cfg.models}
    named = [m for m in settings.get("top1") or {}]
    named += [m for low, _, high in parse_order(settings["order"]) for m in (low, high)] if settings.get("order") else []
    unknown = sorted(set(named) - labels)
    if unknown:
        raise ConfigError(f"imagenette: {unknown} are not models of the pipeline ({', '.join(sorted(labels))})")


@register_report("imagenette", check=check)
def report(ctx, result: Result, trained: dict) -> Result:
    """The targets table (each target, what was measured, whether it was met and by how much it was missed) and
    the README; the experiments' folders as they are."""
    settings = as_dict(ctx.cfg.get("imagenette") or {})
    targets = targets_table(result.parts, settings)
    tables = {**result.tables, "targets": targets}
    return Result(tables=tables, parts=result.parts, raw=result.raw,
                  summary=f"{int(targets['met'].fillna(False).sum())}/{len(targets)} targets met",
                  readme=lambda prov: readme(prov, result.parts, targets, tables.get("training"), ctx.cfg))


def parse_order(chain: str) -> list[tuple[str, str, str]]:
    """``"A < B <= C"`` -> ``[(A, "<", B), (B, "<=", C)]``; model labels hold no spaces."""
    tokens = chain.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0 or any(t not in ("<", "<=") for t in tokens[1::2]):
        raise ConfigError(f"imagenette.order: '{chain}' is not a chain 'A < B <= C' of model labels")
    return [(tokens[i], tokens[i + 1], tokens[i + 2]) for i in range(0, len(tokens) - 2, 2)]


def targets_table(parts: Mapping[str, Result], settings: Mapping) -> pd.DataFrame:
    rows = []
    acc = parts["accuracy"].tables["accuracy"].set_index("model") if "accuracy" in parts else pd.DataFrame()
    for model, threshold in (settings.get("top1") or {}).items():
        if model in acc.index and pd.notna(acc.loc[model, "top1"]):
            r = acc.loc[model]
            met = bool(r["top1"] >= threshold)
            rows.append(_row(f"{model} test top-1 >= {threshold:g}", r["top1"], r["top1_lo"], r["top1_hi"], met,
                             None if met else threshold - r["top1"],
                             by_interval(r["top1_lo"], r["top1_hi"], threshold, "greater")))
        else:
            rows.append(_row(f"{model} test top-1 >= {threshold:g}", None, None, None, None, None, CANNOT_TEST))
    if settings.get("order"):
        con = (parts["accuracy"].tables["contrasts"] if "accuracy" in parts else pd.DataFrame(
            columns=["model", "minus", "metric"])).set_index(["model", "minus", "metric"])
        for low, rel, high in parse_order(settings["order"]):
            what = f"{low} {rel} {high} (paired difference {high} - {low}, test top-1)"
            if (high, low, "top1") not in con.index:
                rows.append(_row(what, None, None, None, None, None, CANNOT_TEST))
                continue
            c = con.loc[(high, low, "top1")]
            word = by_interval(c["lo"], c["hi"], 0.0, "greater")
            met = None if word == CANNOT_TEST else word == SUPPORTED if rel == "<" else word != CONTRADICTED
            rows.append(_row(what, c["difference"], c["lo"], c["hi"], met, None, word))
    if "sensitivity" in parts and "logit_drop" in parts["sensitivity"].tables:
        drop = parts["sensitivity"].tables["logit_drop"]
        own = drop[drop["control"].astype(bool)].set_index("method")
        value = float(own.at["bagnet", "auc_vs_occlusion"]) if "bagnet" in own.index else float("nan")
        if "occlusion" in own.index and value == value:      # NaN: not measured, no row
            target = own["target"].iloc[0]
            rows.append(_row(f"sensitivity control: {target}'s heatmap scored on {target} reaches {CONTROL_PASS:g} of "
                             "occlusion's AUC", value, None, None, bool(value >= CONTROL_PASS),
                             None if value >= CONTROL_PASS else CONTROL_PASS - value,
                             SUPPORTED if value >= CONTROL_PASS else CONTRADICTED))
    return pd.DataFrame(rows, columns=["target", "measured", "lo", "hi", "met", "missed_by", "reading"])


def _row(target, measured, lo, hi, met, missed_by, reading) -> dict:
    return {"target": target, "measured": measured, "lo": lo, "hi": hi, "met": met, "missed_by": missed_by,
            "reading": reading}


def readme(prov: dict, parts: dict, targets: pd.DataFrame, training: pd.DataFrame | None, cfg) -> str:
    shown = targets.assign(measured=[fmt_ci(m, lo, hi) if pd.notna(lo) else (f"{m:.3f}" if pd.notna(m) else "–")
                                     for m, lo, hi in zip(targets["measured"], targets["lo"], targets["hi"])],
                           met=["–" if pd.isna(m) else "yes" if m else "**no**" for m in targets["met"]])
    lines = [
        "# Brendel & Bethge (ICLR 2019) on real ImageNet photos: `make reproduce-imagenette`", "",
        (f"Run of {prov.get('time', '?')} on {prov.get('device', '?')}, commit `{prov.get('git_commit', '?')}`, "
         f"{prov.get('wall_s', 0) / 60:.1f} min (training included only for models it had to train). Data: "
         f"Imagenette2 (`{cfg.data.root}`), {cfg.data.image_size} px, models trained from scratch on its train split "
         f"(a seeded {cfg.data.val_from_train:g} of it held out for model selection), read on its val split (the test "
         "set). The recipe, key by key with its reason: `configs/experiment/imagenette.yaml`."), "",
        "## Targets (a benchmark, not a test)", "",
        io.to_markdown(shown[["target", "measured", "met", "missed_by", "reading"]]), ""]
    lines += shortfall(targets, training)
    if training is not None and len(training):
        lines += ["## Training", "", io.to_markdown(training.drop(columns=["run_dir"], errors="ignore")), "",
                  "`train_min` is wall time, pauses included; `median_epoch_min` x `epochs` leaves the pauses out, "
                  "not other jobs that shared the CPU.", ""]
    lines += ["## Experiments", "", "| folder | what |", "|---|---|"]
    lines += [f"| `{p}/` | {WHAT.get(p, p)} |" for p in parts]
    lines += ["", "Each folder holds its tables (`.csv` + `.md`), figures (`.png` + `.pdf`) and `raw.json` (numbers + "
              "provenance: config, commit, versions, device, seed, time).", ""]
    return "\n".join(lines)


STILL_LEARNING = 0.01   # val top-1 rise over the last quarter of the epochs above which a model is called under-trained
                        # (a cosine schedule's annealing alone lifts it a little; 0.01 is ~19 of the ~1,900 val photos)


def shortfall(targets: pd.DataFrame, training: pd.DataFrame | None) -> list[str]:
    """A missed accuracy target, by how much, and whether its model was still learning when training stopped."""
    missed = targets[targets["met"].eq(False) & targets["missed_by"].notna()]
    if not len(missed):
        return []
    rise = {} if training is None or "val_top1_rise_last_quarter" not in training else dict(
        zip(training["model"], zip(training["val_top1_rise_last_quarter"], training["epochs"])))
    lines = []
    for r in missed.itertuples():
        model = r.target.split(" test top-1")[0]
        why = (f": its val top-1 still rose by {rise[model][0]:.3f} over the last quarter of its {rise[model][1]} "
               "epochs: under-trained, more epochs are the next thing to try"
               if model in rise and rise[model][0] > STILL_LEARNING else "")
        lines.append(f"- Missed: {r.target}, by {r.missed_by:.3f}{why}.")
    return ["## Shortfall", "", *lines, ""]
