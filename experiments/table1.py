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

import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from bagnet import io
from bagnet.checkpoint import load_run, model_kwargs
from bagnet.config import as_dict
from bagnet.errors import ConfigError, WeightsError
from bagnet.models.releases import check_weights, locate_weights
from bagnet.result import Result
from bagnet.train import evaluate_model

from .common import model_overrides, train_models
from .scrambling import scramble_batch

INITS = ("imagenet", "scratch")
REPORT_TABLE1 = {  # the 15-Scene reproducibility report, Table 1 (val, test, scrambled test)
    "ResNet-50": (0.913, 0.907, 0.50), "DenseNet-121": (0.933, 0.918, 0.57),
    "DenseNet-169": (0.953, 0.922, 0.58), "CBAM-ResNet-50": (0.953, 0.934, 0.73),
    "BagNet-9": (0.853, 0.840, None), "BagNet-17": (0.913, 0.905, None), "BagNet-33": (0.947, 0.925, 0.90),
}



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
    if cfg.init not in INITS:
        raise ConfigError(f"init: '{cfg.init}'; valid: {', '.join(INITS)}")
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
    if missing:
        raise WeightsError(f"init={ctx.cfg.init}: {len(missing)} weights file(s) missing (nothing was trained):\n"
                           + "\n".join(missing))
    return files


def task(ctx) -> Result:
    """Train (or reuse) every model of ``cfg.table1.models``, then val / test / scrambled-test top-1."""
    cfg = ctx.cfg
    t1 = cfg.table1
    models = table1_models(cfg)
    release_files = check_all_weights(ctx, models)
    rows, raw = [], {}
    for label, (sub, summary) in train_models(ctx, models).items():
        started = time.perf_counter()
        run_dir = Path(sub.cfg.run_dir)
        data = sub.data
        model, _ = load_run(run_dir / "checkpoints" / "best.pt")
        scr = evaluate_model(model, data, ["test"], as_dict(sub.cfg), ctx.device,
                             transform=scramble_transform(t1.scramble_grid, cfg.seed, data.mean, data.std),
                             suffix=" scrambled")
        scr_metrics, scr_df = scr["test"]
        io.write_predictions(scr_df, run_dir / "eval" / f"predictions_test_scrambled{t1.scramble_grid}.csv.gz")
        extra = {}
        same_px = same_tile_grid(data.image_size, t1.scramble_grid, t1.get("report_tile_px"))
        if same_px:  # the report's tile size in pixels (its 4x4 grid on 224 px images = 56 px tiles)
            m = evaluate_model(model, data, ["test"], as_dict(sub.cfg), ctx.device,
                               transform=scramble_transform(same_px, cfg.seed, data.mean, data.std),
                               suffix=f" scrambled {same_px}x{same_px}")["test"][0]
            extra[f"scrambled test ({t1.report_tile_px} px tiles)"] = m["top1"]
        ev = summary["eval"]
        pub = REPORT_TABLE1.get(label, (None, None, None))
        m = as_dict(sub.cfg.model)
        pretrained = bool(m.get("pretrained") or m.get("weights"))
        loaded = locate_weights(m["name"], **model_kwargs(m)) if pretrained else None
        rows.append({"model": label, "val": ev["val"]["top1"], "test": ev["test"]["top1"],
                     "scrambled test": scr_metrics["top1"], **extra,
                     "report val": pub[0], "report test": pub[1], "report scrambled": pub[2],
                     "init": "imagenet" if pretrained else "scratch", "weights": release_files[label] or "–",
                     "epochs": summary["epochs"], "stopped early": summary.get("stopped_early"),
                     "image_size": data.image_size, "width": sub.cfg.model.get("width", "torchvision"),
                     "train_s": round(summary["train_wall_s"]), "run_dir": str(run_dir)})
        raw[label] = {"run_dir": str(run_dir), "eval": ev, "scrambled_test": scr_metrics,
                      "weights_file": str(loaded) if loaded else None,
                      "summary": {k: v for k, v in summary.items() if k != "eval"},
                      "wall_s": time.perf_counter() - started}
    df = pd.DataFrame(rows)
    return Result(tables={"table1": df}, figures={"table1": table1_figure(df)}, raw=raw,
                  header=lambda prov: table1_header(cfg, prov),
                  summary=" | ".join(f"{r['model']} {r['test']:.3f}/{r['scrambled test']:.3f}" for r in rows))


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


def table1_figure(df: pd.DataFrame):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    bag = df[df["model"].str.startswith("BagNet")]
    q = [int(m.split("-")[1]) for m in bag["model"]]
    a.plot(q, bag["test"], "o-", label="ours: test")
    a.plot(q, bag["report test"], "s--", label="report: test")
    a.set(xlabel="patch size q", ylabel="top-1 accuracy", title="BagNet accuracy vs patch size", xticks=q)
    a.legend()
    bars = [("test", "clean test"), ("scrambled test", "scrambled test (4x4 grid)")]
    bars += [(c, c) for c in df.columns if c.startswith("scrambled test (")]
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
        sched = f"{t.schedule} schedule, {t.epochs} epochs"
    prep = ("squashed to that size, no crop, no augmentation" if d.get("resize") == "squash"
            and not d.get("train_augment", True) else "random-resized-crop training, centre-crop evaluation")
    return (f"{d.image_size} px images ({prep}); {t.optimizer} lr {t.lr:g}, batch {t.batch_size}, label smoothing "
            f"{t.label_smoothing:g}; {sched}")


def table1_header(cfg: DictConfig, prov: dict) -> str:
    init = cfg.get("init", "scratch")
    start = ("ImageNet-pretrained starts (the authors' BagNet release, pytorchcv's weights for the baselines), "
             "each with a fresh Linear(in, 15) head" if init == "imagenet" else
             "every model from scratch (random init; the report fine-tuned ImageNet-pretrained models)")
    return (f"Table 1 of the 15-Scene reproducibility report, reproduced with `experiment=table1` (the report's "
            f"protocol as its notebooks ran it, {REPORT_REPO}; docs/report_protocol.md), profile "
            f"`{cfg.profile_name}`, `init={init}`: {start}; {protocol_note(cfg)}; BagNet width "
            f"{'64' if init == 'imagenet' else cfg.bagnet_width}, seed {cfg.seed}. Scrambled = test images cut "
            f"into a {cfg.table1.scramble_grid}x{cfg.table1.scramble_grid} grid, tiles permuted (seeded)"
            f"{tile_note(cfg)}. `report *` columns are the published numbers; `init` says how each model of ours "
            f"started, `weights` from which release file. Total wall time {prov['wall_s'] / 60:.1f} min on "
            f"{prov['device']}.")


OVERVIEW_COLUMNS = ["model", "profile", "val", "test", "scrambled test", "report val", "report test",
                    "report scrambled", "init", "weights", "image_size", "width", "epochs"]


def table1_overview(root: str | Path) -> tuple[pd.DataFrame, str] | None:
    """One table of every profile's Table 1 under ``root`` (``root/<profile>/raw.json``), for side-by-side reading."""
    frames, sources = [], []
    for raw_path in sorted(Path(root).glob("*/raw.json")):
        blob = json.loads(raw_path.read_text())
        prov = blob.get("provenance") or {}
        if (prov.get("config") or {}).get("task") != "table1" or "table1" not in (blob.get("tables") or {}):
            continue
        df = pd.DataFrame(blob["tables"]["table1"])
        df["profile"] = raw_path.parent.name
        cols = OVERVIEW_COLUMNS[:5] + [c for c in df.columns if c.startswith("scrambled test (")] + OVERVIEW_COLUMNS[5:]
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
