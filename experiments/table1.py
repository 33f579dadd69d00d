"""Table 1 of the 15-Scene reproducibility report: the report of a pipeline config (configs/experiment/table1.yaml,
``pipeline.report: table1``), by the report's protocol as its notebooks ran it (docs/report_protocol.md).

The pipeline trains (or reuses, or resumes) every model of ``pipeline.train`` (the init's entries:
``table1.models.<init>``; with ``imagenet`` every release file is fetched before anything trains) and the
``pipeline.seed_models`` again at each of ``pipeline.extra_seeds``, then runs the registered ``scrambling``
experiment on the test split: the report's 4 x 4 grid, tiles permuted (seeded per image), the remainder
blackened as the report's scrambling notebook, plus the grid of the report's tile size in pixels. This module
only reads what they returned: val / test top-1 from each run's own predictions, scrambled test top-1 and the
share of clean accuracy kept from the scrambling experiment's per-image table (its clean and scrambled
forwards: the same numerics on the same images), the contrasts, the seeds and their spread.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from bagnet import io
from bagnet.checkpoint import model_kwargs
from bagnet.config import as_dict
from bagnet.errors import ConfigError
from bagnet.models.releases import locate_weights
from bagnet.result import Result
from bagnet.stats import bootstrap_ci, kept_share_diff, paired_bootstrap_ci, ratio_ci
from bagnet.verdicts import reading

from . import published
from .registry import register_report
from .scrambling import tile_grid

REPORT_TABLE1 = published.report_table1()   # the 15-Scene report's Table 1: model -> (val, test, scrambled test)


def check(cfg) -> None:
    """Before anything trains: the scrambled test runs on every test image, with a per-image table to read."""
    s = cfg.experiments.scrambling
    if "scrambling" not in cfg.pipeline.experiments or s.num_images is not None or not s.per_image:
        raise ConfigError("table1: Table 1 reads the scrambling experiment on every test image, image by image; keep "
                          "scrambling in pipeline.experiments with experiments.scrambling.num_images=null and per_image=true")
    if cfg.split != "test":
        raise ConfigError(f"table1: the scrambled test is on the test split; split={cfg.split}")
    if s.get("image_size") is not None:
        raise ConfigError("table1: the scrambled test is at the models' size, data.image_size; leave "
                          "experiments.scrambling.image_size null")
    # a misspelt label, not a row left out of this run (its contrasts are then left out too)
    rows = {label for entries in cfg.table1.models.values() for label in entries}
    named = [cfg.table1.get("reference")] + [m for pair in cfg.table1.get("contrast_pairs") or [] for m in pair]
    unknown = sorted({m for m in named if m} - rows)
    if unknown:
        raise ConfigError(f"table1: reference / contrast_pairs name {unknown}, not rows of table1.models "
                          f"({', '.join(sorted(rows))})")


@register_report("table1", check=check)
def report(ctx, result: Result, trained: dict) -> Result:
    """Table 1 (val / test / scrambled-test top-1 with 95% bootstrap intervals over images, beside the report's
    numbers), the contrasts against ``table1.reference`` and ``table1.contrast_pairs``, and with extra seeds the
    table ``seeds`` (every seed's row) and ``seed_spread`` (mean, sd, range over seeds)."""
    cfg = ctx.cfg
    seed_runs = result.raw.get("seed_runs") or {}
    releases = result.raw.get("release_files") or {}    # label -> the release file it started from (None: random)
    per_image = result.parts["scrambling"].tables["per_image"]
    rows, raw, correctness = [], {}, {}
    for label, (sub, summary) in trained.items():
        if label in seed_runs:
            continue
        rows.append(table1_row(cfg, label, sub, summary, per_image, releases.get(label)))
        raw[label], correctness[label] = run_raw(sub, summary, rows[-1]), per_image_correctness(sub, label, per_image, cfg)
    df = pd.DataFrame(rows)
    tables = {"table1": df}
    if cfg.table1.get("reference") in correctness:
        tables["contrasts"] = contrasts(correctness, cfg.table1.reference, cfg.seed,
                                        [list(p) for p in cfg.table1.get("contrast_pairs") or []])
    if seed_runs:
        seed_rows = [{"seed": cfg.seed, **r} for r in rows if r["model"] in {s["model"] for s in seed_runs.values()}]
        for label, s in seed_runs.items():
            sub, summary = trained[label]
            row = table1_row(cfg, label, sub, summary, per_image, releases.get(s["model"]))
            seed_rows.append({"seed": s["seed"], **row, "model": s["model"]})
            raw[label] = run_raw(sub, summary, row)
        seeds = pd.DataFrame(seed_rows)
        seeds = seeds[["model", "seed", *metric_columns(seeds), "run_dir"]]
        tables["seeds"], tables["seed_spread"] = seeds.sort_values(["model", "seed"]), seed_spread(seeds)
    # the scrambling part as written: without its per-image table (tens of thousands of rows; kept with the units
    # in the run dir, <run_dir>/scrambling/all/per_image.csv.gz)
    scrambling = result.parts["scrambling"]
    written = Result(tables={k: v for k, v in scrambling.tables.items() if k != "per_image"}, figures=scrambling.figures,
                     raw=scrambling.raw, summary=scrambling.summary, header=scrambling.header)
    return Result(tables={**result.tables, **tables}, figures={"table1": table1_figure(df)},
                  raw={**raw, "pipeline": result.raw}, parts={"scrambling": written},
                  header=lambda prov: table1_header(cfg, prov),
                  summary=" | ".join(f"{r['model']} {r['test']:.3f}/{r['scrambled test']:.3f}" for r in rows))


def scrambled_columns(cfg: DictConfig) -> dict[int, tuple[str, str]]:
    """grid -> (its scrambled column, its kept column): the report's grid, and the grid of the report's tile
    size in pixels when the images are not the report's 224 px."""
    s = cfg.experiments.scrambling
    out = {int(s.grids[0]): ("scrambled test", "kept")}
    extra = tile_grid(int(cfg.data.image_size), list(s.grids), s.get("tile_px"))
    if extra:
        out[extra] = tile_columns(int(s.tile_px))
    return out


def per_image_correctness(sub, label: str, per_image: pd.DataFrame, cfg: DictConfig) -> pd.DataFrame:
    """Per test image (index): ``test`` (the run's own predictions) and, per scrambled column, the pair
    (scrambled, clean) of the scrambling experiment, as :func:`contrasts` reads them."""
    test = correct(pd.read_csv(Path(sub.cfg.run_dir) / "eval" / "predictions_test.csv.gz"))
    mine = per_image[per_image["model"] == label]
    clean = mine[mine["condition"] == "clean"].set_index("index")["correct"].astype(float)
    if len(test) != len(clean) or set(test.index) != set(clean.index):   # e.g. trainer.max_eval_images capped the run's
        raise ConfigError(f"table1: {label}'s test predictions cover {len(test)} images, the scrambled test "
                          f"{len(clean)}: the run evaluated a subset (trainer.max_eval_images="
                          f"{sub.cfg.trainer.get('max_eval_images')}); Table 1 reads both on the same images")
    out = {"test": test.astype(float)}
    for g, (column, _) in scrambled_columns(cfg).items():
        s = mine[mine["condition"] == f"scrambled_{g}x{g}"].set_index("index")["correct"].astype(float)
        out[column], out[f"clean for {column}"] = s.reindex(test.index), clean.reindex(test.index)
    return pd.DataFrame(out)


def table1_row(cfg: DictConfig, label: str, sub, summary: dict, per_image: pd.DataFrame, release: str | None) -> dict:
    """One model's Table 1 row: accuracies with 95% bootstrap CIs over images, the share of clean test accuracy
    kept when scrambled with its paired CI, the report's numbers, how the run was trained."""
    run_dir = Path(sub.cfg.run_dir)
    row = {"model": label}
    for split in ("val", "test"):
        c = correct(pd.read_csv(run_dir / "eval" / f"predictions_{split}.csv.gz"))
        row.update(with_ci(split, bootstrap_ci(c.to_numpy(float), seed=cfg.seed)))
    c = per_image_correctness(sub, label, per_image, cfg)
    for g, (column, kept) in scrambled_columns(cfg).items():
        s, clean = c[column].to_numpy(), c[f"clean for {column}"].to_numpy()
        row.update(with_ci(column, bootstrap_ci(s, seed=cfg.seed)))
        row.update(with_ci(kept, ratio_ci(s, clean, seed=cfg.seed)))
    pub = REPORT_TABLE1.get(label, (None, None, None))
    m = as_dict(sub.cfg.model)
    pretrained = bool(m.get("pretrained") or m.get("weights"))
    extra = len(scrambled_columns(cfg)) > 1
    row.update({"report val": pub[0], "report test": pub[1], "report scrambled": pub[2],
                "report kept": round(pub[2] / pub[1], 4) if pub[2] and pub[1] else None,
                "init": "imagenet" if pretrained else "scratch", "weights": release or "–",
                "epochs": summary["epochs"], "stopped early": summary.get("stopped_early"),
                "image_size": int(cfg.data.image_size), "width": sub.cfg.model.get("width", "torchvision"),
                "patch_size": sub.cfg.model.get("patch_size") if m["name"] == "bagnet" else None,   # q; None: not a BagNet
                "report_tile_px": int(cfg.experiments.scrambling.tile_px) if extra else None,   # the `(N px tiles)` columns' N
                "train_s": round(summary["train_wall_s"]), "run_dir": str(run_dir)})
    return row


def run_raw(sub, summary: dict, row: dict) -> dict:
    """A row's raw entry: its run, its evaluation and training summary, the weights file it started from."""
    m = as_dict(sub.cfg.model)
    weights = locate_weights(m["name"], **model_kwargs(m)) if (m.get("pretrained") or m.get("weights")) else None
    return {"run_dir": str(sub.cfg.run_dir), "eval": summary["eval"],
            "scrambled": {c: row[c] for c in row if c.startswith("scrambled test") and not c.endswith(("_lo", "_hi"))},
            "weights_file": str(weights) if weights else None,
            "summary": {k: v for k, v in summary.items() if k != "eval"}}


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The accuracy columns of a Table 1 frame (not their interval bounds)."""
    return [c for c in df.columns if (c in ("val", "test") or c.startswith(("scrambled test", "kept")))
            and not c.endswith(("_lo", "_hi"))]


def correct(df: pd.DataFrame) -> pd.Series:
    """Top-1 correctness per image, indexed by dataset index."""
    return (df["pred"] == df["label"]).set_axis(df["index"])


def with_ci(name: str, ci) -> dict:
    return {name: ci.estimate, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi}


def contrasts(per_image: dict, reference: str, seed: int, pairs=()) -> pd.DataFrame:
    """Every model against ``reference`` (and each ``[model, minus]`` of ``pairs``) on the same test
    images: the clean top-1 difference and the difference in the share of clean accuracy kept when
    scrambled (the report's signature: a BagNet keeps more), each with a paired bootstrap 95% CI over
    images and a two-sided verdict. ``per_image``: label -> frame of :func:`per_image_correctness`."""
    rows = []
    todo = [(label, reference) for label in per_image if label != reference]
    todo += [(a, b) for a, b in pairs if a in per_image and b in per_image]
    for label, minus in todo:
        df, ref = per_image[label], per_image[minus].reindex(per_image[label].index)
        stats = {"test": paired_bootstrap_ci(df["test"].to_numpy(float), ref["test"].to_numpy(float), seed=seed)}
        for column in [c for c in df.columns if c.startswith("scrambled test")]:
            pair = [column, f"clean for {column}"]
            stats["kept" + column.removeprefix("scrambled test")] = paired_bootstrap_ci(
                df[pair].to_numpy(float), ref[pair].to_numpy(float), kept_share_diff, seed=seed)
        for metric, ci in stats.items():
            rows.append({"model": label, "minus": minus, "metric": metric, "difference": ci.estimate,
                         "lo": ci.lo, "hi": ci.hi, "verdict": reading(*ci)})
    return pd.DataFrame(rows)


def seed_spread(seeds: pd.DataFrame) -> pd.DataFrame:
    """Per model and metric: the seeds' mean, sample sd, min and max (training-run variation, which the
    per-image intervals of one run do not contain)."""
    long = seeds.melt(id_vars=["model", "seed"], value_vars=metric_columns(seeds), var_name="metric")
    out = long.groupby(["model", "metric"], sort=False)["value"].agg(
        n_seeds="count", mean="mean", sd="std", min="min", max="max").reset_index()
    return out


def tile_columns(px: int) -> tuple[str, str]:
    """The scrambled and kept columns of the grid with the report's tile size of ``px`` pixels."""
    return f"scrambled test ({px} px tiles)", f"kept ({px} px tiles)"


def report_tile_px(table1: pd.DataFrame) -> int | None:
    """The report's tile size of ``table1``'s extra grid (:func:`tile_columns`); None: no extra grid."""
    px = with_structure(table1)["report_tile_px"].dropna()
    return int(px.iloc[0]) if len(px) else None


def with_structure(table1: pd.DataFrame) -> pd.DataFrame:
    """``table1`` with its ``patch_size`` and ``report_tile_px`` columns. Tables written before :func:`task`
    wrote them (the committed results/table1/cpu-scratch/) get them here, read back from the labels they
    carry ("BagNet-33", "scrambled test (56 px tiles)"): the one place that parses these display strings."""
    df = table1.copy()
    if "patch_size" not in df:
        df["patch_size"] = [float(m.split("-")[1]) if m.startswith("BagNet-") else None for m in df["model"]]
    if "report_tile_px" not in df:
        px = [c.removeprefix("kept (").split(" px")[0] for c in df.columns
              if c.startswith("kept (") and not c.endswith(("_lo", "_hi"))]
        df["report_tile_px"] = float(px[0]) if px else None
    return df


def table1_figure(df: pd.DataFrame):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    df = with_structure(df)
    bag = df[df["patch_size"].notna()]
    q = [int(v) for v in bag["patch_size"]]
    a.plot(q, bag["test"], "o-", label="ours: test")
    a.plot(q, bag["report test"], "s--", label="report: test")
    a.set(xlabel="patch size q", ylabel="top-1 accuracy", title="BagNet accuracy vs patch size", xticks=q)
    a.legend()
    bars = [("test", "clean test"), ("scrambled test", "scrambled test (4x4 grid)")]
    px = report_tile_px(df)
    bars += [(tile_columns(px)[0],) * 2] if px else []
    w = 0.8 / len(bars)
    for k, (col, label) in enumerate(bars):
        b.bar([i + (k - (len(bars) - 1) / 2) * w for i in range(len(df))], df[col], w, label=label)
    x = range(len(df))
    b.set_xticks(list(x), df["model"], rotation=30, ha="right")
    b.set(ylabel="top-1 accuracy", title="Clean vs scrambled (ours)")
    b.legend()
    fig.tight_layout()
    return fig


def tile_note(cfg: DictConfig) -> str:
    s, size = cfg.experiments.scrambling, int(cfg.data.image_size)
    g, tile = int(s.grids[0]), size // int(s.grids[0])
    rem = size - g * tile
    kept = ("black as in the report's scrambling notebook" if s.get("remainder", "black") == "black"
            else "left in place (the report's notebook blackens it)")
    note = (f" ({tile} px tiles, remainder {rem} px {kept})" if rem else
            f" ({tile} px tiles, no remainder, as the report's 224 px / 4 = 56 px)")
    alt = tile_grid(size, list(s.grids), s.get("tile_px"))
    if alt:
        note += (f"; the report's tiles were {s.tile_px} px: the column `scrambled test "
                 f"({s.tile_px} px tiles)` uses a {alt}x{alt} grid, the report's tile size in pixels")
    return note


REPORT_REPO = "COMP6248-Reproducability-Challenge/BagNets-Reprodicbility-Challenge"


def protocol_note(cfg: DictConfig) -> str:
    """How these models were trained, in words, from the config."""
    t, d = cfg.trainer, cfg.data
    if t.schedule == "plateau_halving":
        sched = (f"val after every epoch, best-val checkpoint (ties count), lr x{t.factor} after every {t.patience} "
                 f"epochs without a new best, stop after {t.early_stop} such epochs in a row, at most {t.epochs} epochs")
    else:
        sched = f"{t.warmup_epochs:g} warmup epochs then a {t.schedule} schedule, {t.epochs} epochs, best-val checkpoint"
    evaluation = "squashed to that size, no crop" if d.get("resize") == "squash" else "centre crop"
    scale = d.get("crop_scale")          # photo datasets only (the synthetic probe is never cropped)
    training = ((f"random-resized crops (scale {scale[0]:g}-{scale[1]:g}) and flips" if scale else "augmentation on")
                if d.get("train_augment", True) else "the same, no augmentation")
    return (f"{d.image_size} px images (evaluation: {evaluation}; training: {training}); {t.optimizer} lr {t.lr:g}, "
            f"weight decay {t.weight_decay:g}, batch {t.batch_size}, label smoothing {t.label_smoothing:g}, "
            f"precision {t.precision}; {sched}")


def table1_header(cfg: DictConfig, prov: dict) -> str:
    init = cfg.get("init", "scratch")
    start = ("ImageNet-pretrained starts (the authors' BagNet release, pytorchcv's weights for the baselines), "
             "each with a fresh Linear(in, 15) head" if init == "imagenet" else
             "every model from scratch (random init; the report fine-tuned ImageNet-pretrained models)")
    recipe = (f"the report's protocol as its notebooks ran it, {REPORT_REPO}; docs/report_protocol.md"
              if init == "imagenet" else "the report's data split, evaluation images and scrambling; trained by the "
              "from-scratch recipe of configs/init/scratch.yaml, not the report's fine-tuning protocol")
    return (f"Table 1 of the 15-Scene reproducibility report, reproduced with `experiment=table1` ({recipe}), "
            f"profile `{cfg.profile_name}`, `init={init}`: {start}; {protocol_note(cfg)}; BagNet width "
            f"{'64' if init == 'imagenet' else cfg.bagnet_width}, seed {cfg.seed}. Scrambled = test images cut "
            f"into a {cfg.experiments.scrambling.grids[0]}x{cfg.experiments.scrambling.grids[0]} grid, tiles permuted (seeded)"
            f"{tile_note(cfg)}; scrambled test and `kept` come from one forward pass of each model on the clean and the "
            f"scrambled images (`kept` = scrambled / that clean top-1). `report *` columns are the published numbers; `init` says how each model of ours "
            f"started, `weights` from which release file. This task took {prov['wall_s'] / 60:.1f} min on "
            f"{prov['device']} (training included only for runs it had to train; each run's own time: `train_s`).")


OVERVIEW_COLUMNS = ["model", "profile", "val", "test", "scrambled test", "kept", "report val", "report test",
                    "report scrambled", "report kept", "init", "weights", "image_size", "width", "epochs"]


def table1_overview(root: str | Path) -> tuple[pd.DataFrame, str] | None:
    """One table of every profile's Table 1 under ``root`` (``root/<profile>/raw.json``), for side-by-side reading."""
    frames, sources = [], []
    for raw_path in sorted(Path(root).glob("*/raw.json")):
        blob = io.read_result(raw_path)
        prov = blob.get("provenance") or {}
        config = prov.get("config") or {}
        made_by_table1 = config.get("task") == "table1" or (config.get("pipeline") or {}).get("report") == "table1"
        if not made_by_table1 or "table1" not in (blob.get("tables") or {}):   # task=table1: before the config pipeline
            continue
        df = pd.DataFrame(blob["tables"]["table1"])
        df["profile"] = raw_path.parent.name
        cols = (OVERVIEW_COLUMNS[:5] + [c for c in df.columns if c.startswith("scrambled test (")
                                         and not c.endswith(("_lo", "_hi"))] + OVERVIEW_COLUMNS[5:])
        frames.append(df[[c for c in cols if c in df.columns]])
        sources.append(f"`{raw_path.parent.name}/` ({prov.get('device', '?')}, commit "
                       f"{str(prov.get('git_commit', '?'))[:10]}, {prov.get('time', '?')})")
    if not frames:
        return None
    header = ("Table 1 of the 15-Scene reproducibility report, every profile run so far; each profile's folder "
              "holds its full table, figure and provenance: " + "; ".join(sources) + ".")
    return pd.concat(frames, ignore_index=True), header


def figures_from_tables(tables) -> dict:
    """The figures that the saved tables alone determine (for scripts/render_results.py)."""
    return {"table1": table1_figure(tables["table1"])} if "table1" in tables else {}
