"""Table 1 of the 15-Scene reproducibility report, by the report's protocol (``experiment=table1``, as its
notebooks ran it: docs/report_protocol.md): train (or reuse) every model, then val / test / scrambled-test
top-1 beside the published numbers.

``init`` picks each row's model entry (``table1.models.<label>.<init>``): ``imagenet`` = the report's starting
points (the authors' BagNet release, pytorchcv's ImageNet weights for the baselines), ``scratch`` = random
init. With ``imagenet`` every model's weights are fetched before anything trains; missing ones are named
(file, url, where to put it) together. Each model is a ``task=train`` run composed by Hydra from this run's
command line with ``model=<option>`` (so finished runs are reused and interrupted ones resume); the scrambled
test cuts every test image into the report's ``scramble_grid`` x ``scramble_grid`` tiles, permutes them
(seeded per image) and blackens any remainder, as the report's scrambling notebook does.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from bagnet import io
from bagnet.checkpoint import load_run, model_kwargs
from bagnet.config import as_dict
from bagnet.errors import WeightsError
from bagnet.models import is_bagnet
from bagnet.models.releases import check_weights, locate_weights
from bagnet.result import Result
from bagnet.stats import bootstrap_ci, paired_bootstrap_ci, ratio_ci
from bagnet.verdicts import reading
from bagnet.train import evaluate_model

from . import published
from .training import estimate_training, model_overrides, train_models
from .scrambling import scramble_batch
from .registry import register_pipeline

REPORT_TABLE1 = published.report_table1()   # the 15-Scene report's Table 1: model -> (val, test, scrambled test)



def scramble_transform(g: int, seed: int, mean=None, std=None):
    """A batch transform for :func:`bagnet.train.evaluate_model`: g x g tiles permuted per image; with
    ``mean``/``std`` the remainder (rows/columns beyond g * (width // g)) is black, i.e. ``-mean/std`` after
    normalisation, as the notebook's ``Image_Scrambling`` (tile side from the width, zero image)."""
    def transform(images, indices):
        out = scramble_batch(images, g, seed, indices)
        if mean is not None:
            side = g * (out.shape[-1] // g)
            black = (-torch.as_tensor(mean) / torch.as_tensor(std)).to(out.device, out.dtype).view(3, 1, 1)
            out[..., side:, :] = black
            out[..., :, side:] = black
        return out
    return transform


def table1_models(cfg: DictConfig) -> dict:
    """Row label -> the model entry of ``cfg.init``."""
    return {label: entries[cfg.init] for label, entries in cfg.table1.models.items()}


def check_all_weights(ctx, models: dict) -> dict:
    """Fetch every pretrained model's weights before anything trains; all missing files in one error, one
    line each. Returns label -> release file (None: random init)."""
    base = [o for o in ctx.overrides if not o.lstrip("+~").startswith("model")]
    files, missing = {}, []
    for label, spec in models.items():
        m = as_dict(replace(ctx, overrides=base).with_overrides("task=train", *model_overrides(spec)).cfg.model)
        files[label] = None
        if m.get("pretrained") or m.get("weights"):
            try:
                files[label] = check_weights(m["name"], **model_kwargs(m))
            except WeightsError as e:
                missing.append(f"{label}: {e}")
    if missing:   # each file's url and where to put it on stdout; the error itself is one short line
        print(f"init={ctx.cfg.init}: weights files missing:\n" + "\n".join(f"  {m}" for m in missing), flush=True)
        raise WeightsError(f"init={ctx.cfg.init}: {len(missing)} of {len(models)} weights files missing, nothing was "
                           f"trained (missing: {', '.join(m.split(':')[0] for m in missing)}; their urls are listed "
                           "above): put them in $BAGNET_WEIGHTS_DIR, or train from random weights with init=scratch "
                           "(make reproduce-table1 INIT=scratch)")
    return files


@register_pipeline("table1")
def task(ctx) -> Result:
    """Train (or reuse) every model of ``cfg.table1.models``, then val / test / scrambled-test top-1 with 95%
    bootstrap intervals over images; ``table1.seed_models`` are trained again at each ``table1.extra_seeds``
    (table ``seeds``: every seed's row; ``seed_spread``: mean, sd, range over seeds)."""
    cfg = ctx.cfg
    models = table1_models(cfg)
    release_files = check_all_weights(ctx, models)
    seed_models = {label: models[label] for label in cfg.table1.get("seed_models") or [] if label in models}
    extra_seeds = list(cfg.table1.get("extra_seeds") or []) if seed_models else []

    def seed_overrides(seed: int) -> list[str]:
        extra = [f"seed={seed}"]
        if ctx.with_overrides(*extra).cfg.run_name == cfg.run_name:   # a run_name= without the seed
            extra.append(f"run_name={cfg.run_name}-seed{seed}")
        return extra
    if ctx.dist.is_main and cfg.table1.get("estimate", True):
        estimate_training(ctx, {"": (models, []), **{f" seed {s}": (seed_models, seed_overrides(s))
                                                     for s in extra_seeds}})
    rows, raw, per_image = [], {}, {}
    for label, (sub, summary) in train_models(ctx, models).items():
        row, raw[label], per_image[label] = evaluate_row(ctx, label, sub, summary)
        at = list(row).index("init") + 1                     # weights beside init, as before
        items = list(row.items())
        rows.append(dict(items[:at] + [("weights", release_files[label] or "–")] + items[at:]))
    df = pd.DataFrame(rows)
    tables = {"table1": df}
    if cfg.table1.get("reference") in per_image:
        tables["contrasts"] = contrasts(per_image, cfg.table1.reference, cfg.seed,
                                        [list(p) for p in cfg.table1.get("contrast_pairs") or []])
    if extra_seeds:
        seed_rows = [{"seed": cfg.seed, **r} for r in rows if r["model"] in seed_models]
        for seed in extra_seeds:
            for label, (sub, summary) in train_models(ctx, seed_models, *seed_overrides(seed)).items():
                row, raw[f"{label} seed {seed}"], _ = evaluate_row(ctx, label, sub, summary)
                seed_rows.append({"seed": seed, **row})
        seeds = pd.DataFrame(seed_rows)
        seeds = seeds[["model", "seed", *metric_columns(seeds), "run_dir"]]
        tables["seeds"], tables["seed_spread"] = seeds.sort_values(["model", "seed"]), seed_spread(seeds)
    return Result(tables=tables, figures={"table1": table1_figure(df)}, raw=raw,
                  header=lambda prov: table1_header(cfg, prov),
                  summary=" | ".join(f"{r['model']} {r['test']:.3f}/{r['scrambled test']:.3f}" for r in rows))


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The accuracy columns of a Table 1 frame (not their interval bounds)."""
    return [c for c in df.columns if (c in ("val", "test") or c.startswith(("scrambled test", "kept")))
            and not c.endswith(("_lo", "_hi"))]


def correct(df: pd.DataFrame) -> pd.Series:
    """Top-1 correctness per image, indexed by dataset index."""
    return (df["pred"] == df["label"]).set_axis(df["index"])


def with_ci(name: str, ci) -> dict:
    return {name: ci.estimate, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi}


def evaluate_row(ctx, label: str, sub, summary: dict) -> tuple[dict, dict, pd.DataFrame]:
    """One model's Table 1 row (accuracies with 95% bootstrap CIs over images, the share of clean test
    accuracy kept when scrambled with its paired CI), its raw entry, and its per-image test correctness
    (columns ``test`` and one per scrambled column, indexed by dataset index)."""
    cfg, t1 = ctx.cfg, ctx.cfg.table1
    started = time.perf_counter()
    run_dir = Path(sub.cfg.run_dir)
    data = sub.data
    model, _ = load_run(run_dir / "checkpoints" / "best.pt")
    clean = {split: correct(pd.read_csv(run_dir / "eval" / f"predictions_{split}.csv.gz")) for split in ("val", "test")}
    row = {"model": label}
    for split, c in clean.items():
        row.update(with_ci(split, bootstrap_ci(c.to_numpy(), seed=cfg.seed)))
    grids = {"scrambled test": (t1.scramble_grid, "kept")}   # column -> (grid, its kept column)
    same_px = same_tile_grid(data.image_size, t1.scramble_grid, t1.get("report_tile_px"))
    if same_px:  # the report's tile size in pixels (its 4x4 grid on 224 px images = 56 px tiles)
        scrambled_column, kept_column = tile_columns(t1.report_tile_px)
        grids[scrambled_column] = (same_px, kept_column)
    scrambled, per_image = {}, {"test": clean["test"]}
    for column, (g, kept) in grids.items():
        m, scr_df = evaluate_model(model, data, ["test"], as_dict(sub.cfg), ctx.device,
                                   transform=scramble_transform(g, cfg.seed, data.mean, data.std),
                                   suffix=f" scrambled {g}x{g}")["test"]
        if ctx.dist.is_main:   # the one process that writes, holding the run dir's lock as its training did
            with io.dir_lock(run_dir):
                io.write_predictions(scr_df, run_dir / "eval" / f"predictions_test_scrambled{g}.csv.gz")
        s = correct(scr_df).reindex(clean["test"].index)
        row.update(with_ci(column, bootstrap_ci(s.to_numpy(), seed=cfg.seed)))
        row.update(with_ci(kept, ratio_ci(s.to_numpy(), clean["test"].to_numpy(), seed=cfg.seed)))
        scrambled[column] = m
        per_image[column] = s
    pub = REPORT_TABLE1.get(label, (None, None, None))
    m = as_dict(sub.cfg.model)
    pretrained = bool(m.get("pretrained") or m.get("weights"))
    loaded = locate_weights(m["name"], **model_kwargs(m)) if pretrained else None
    row.update({"report val": pub[0], "report test": pub[1], "report scrambled": pub[2],
                "report kept": round(pub[2] / pub[1], 4) if pub[2] and pub[1] else None,
                "init": "imagenet" if pretrained else "scratch",
                "epochs": summary["epochs"], "stopped early": summary.get("stopped_early"),
                "image_size": data.image_size, "width": sub.cfg.model.get("width", "torchvision"),
                "patch_size": model.patch_size if is_bagnet(model) else None,   # q; None: not a BagNet
                "report_tile_px": t1.report_tile_px if same_px else None,      # the `(N px tiles)` columns' N
                "train_s": round(summary["train_wall_s"]), "run_dir": str(run_dir)})
    raw = {"run_dir": str(run_dir), "eval": summary["eval"], "scrambled": scrambled,
           "weights_file": str(loaded) if loaded else None,
           "summary": {k: v for k, v in summary.items() if k != "eval"},
           "wall_s": time.perf_counter() - started}
    return row, raw, pd.DataFrame(per_image)


def _kept_diff(a, b, axis: int = 0):
    """(scrambled / clean accuracy of a) - (the same of b); a, b: [..., images, 2] = (scrambled, clean)."""
    ma, mb = np.mean(a, axis=axis), np.mean(b, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ma[..., 0] / ma[..., 1] - mb[..., 0] / mb[..., 1]


def contrasts(per_image: dict, reference: str, seed: int, pairs=()) -> pd.DataFrame:
    """Every model against ``reference`` (and each ``[model, minus]`` of ``pairs``) on the same test
    images: the clean top-1 difference and the difference in the share of clean accuracy kept when
    scrambled (the report's signature: a BagNet keeps more), each with a paired bootstrap 95% CI over
    images and a two-sided verdict."""
    rows = []
    todo = [(label, reference) for label in per_image if label != reference]
    todo += [(a, b) for a, b in pairs if a in per_image and b in per_image]
    for label, minus in todo:
        df, ref = per_image[label], per_image[minus]
        a, b = df.to_numpy(float), ref.reindex(df.index).to_numpy(float)
        stats = {"test": paired_bootstrap_ci(a[:, 0], b[:, 0], seed=seed)}
        for j, column in enumerate(df.columns[1:], start=1):
            kept = "kept" + column.removeprefix("scrambled test")
            stats[kept] = paired_bootstrap_ci(a[:, [j, 0]], b[:, [j, 0]], _kept_diff, seed=seed)
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


def same_tile_grid(image_size: int, grid: int, tile_px: int | None) -> int | None:
    """The grid whose tiles are closest to ``tile_px`` pixels, if ``grid`` gives other tiles (else None).

    Scrambling destroys every patch that straddles a tile border; with tiles smaller than q (e.g. the 4x4
    grid on the cpu profile's 112 px images: 28 px < 33) a BagNet-q loses all its intact patches, which the
    report's 56 px tiles never caused. So the table adds the report's tile size in pixels.
    """
    if not tile_px:
        return None
    g = round(image_size / tile_px)
    return g if g != grid and g >= 2 else None   # one tile (or none) per image: nothing to scramble


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
    t1, size = cfg.table1, cfg.data.image_size
    g, tile = t1.scramble_grid, size // t1.scramble_grid
    rem = size - g * tile
    note = (f" ({tile} px tiles, remainder {rem} px black as in the report's scrambling notebook)" if rem else
            f" ({tile} px tiles, no remainder, as the report's 224 px / 4 = 56 px)")
    alt = same_tile_grid(size, g, t1.get("report_tile_px"))
    if alt:
        note += (f"; the report's tiles were {t1.report_tile_px} px: the column `scrambled test "
                 f"({t1.report_tile_px} px tiles)` uses a {alt}x{alt} grid, the report's tile size in pixels")
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
            f"into a {cfg.table1.scramble_grid}x{cfg.table1.scramble_grid} grid, tiles permuted (seeded)"
            f"{tile_note(cfg)}. `report *` columns are the published numbers; `init` says how each model of ours "
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
        if (prov.get("config") or {}).get("task") != "table1" or "table1" not in (blob.get("tables") or {}):
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
