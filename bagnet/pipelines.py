"""Multi-run pipelines: Table 1 of the 15-Scene reproducibility report, and the synthetic demo.

Each trains its models through ``task_train`` (so finished runs with the same config are reused,
interrupted ones resume) and then evaluates and runs experiments in-process.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from . import io
from .data import build_data
from .provenance import provenance
from .result import Result
from .tasks import as_dict, setup, task, task_train
from .train import ConfigError, evaluate_checkpoint, model_from_checkpoint

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_group_option(group: str, option: str) -> DictConfig:
    """configs/<group>/<option>.yaml with its same-group defaults merged in (what Hydra would compose)."""
    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise ConfigError(f"unknown {group} '{option}'; available: {', '.join(valid)}")
    node = OmegaConf.load(path)
    parents = [d for d in node.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*[load_group_option(group, p) for p in parents], node)


def with_model(cfg: DictConfig, model: str | dict, **overrides) -> DictConfig:
    """A copy of ``cfg`` whose model group is ``model``: an option name, or a mapping
    ``{option: name, <model key>: value, ..., trainer: {<trainer overrides>}}``."""
    spec = {"option": model} if isinstance(model, str) else OmegaConf.to_container(OmegaConf.create(model))
    sub = copy.deepcopy(cfg)
    OmegaConf.set_struct(sub, False)
    trainer = spec.pop("trainer", None)
    sub.model = OmegaConf.merge(load_group_option("model", spec.pop("option")), spec)
    if trainer:
        sub.trainer = OmegaConf.merge(sub.trainer, trainer)
    for k, v in overrides.items():
        OmegaConf.update(sub, k, v, merge=True)
    return sub


def scramble_transform(g: int, seed: int):
    """Scramble every image into a g x g tile permutation seeded by (seed, image index)."""
    from experiments.scrambling import scramble

    def transform(images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        out = torch.empty_like(images)
        for k, i in enumerate(indices):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + int(i))
            out[k] = scramble(images[k: k + 1], g, gen)[0]
        return out
    return transform


# ---------------------------------------------------------------- Table 1
REPORT_TABLE1 = {  # the 15-Scene reproducibility report, Table 1 (val, test, scrambled test)
    "ResNet-50": (0.913, 0.907, 0.50), "DenseNet-121": (0.933, 0.918, 0.57),
    "DenseNet-169": (0.953, 0.922, 0.58), "CBAM-ResNet-50": (0.953, 0.934, 0.73),
    "BagNet-9": (0.853, 0.840, None), "BagNet-17": (0.913, 0.905, None), "BagNet-33": (0.947, 0.925, 0.90),
}


def table1(cfg: DictConfig) -> Result:
    """Train (or reuse) every model of ``cfg.table1.models``, then val / test / scrambled-test top-1."""
    t1 = cfg.table1
    device, _ = setup(cfg)
    rows, raw = [], {}
    data = None
    for label, option in t1.models.items():
        sub = with_model(cfg, option, task="train")
        started = time.perf_counter()
        summary = task_train(sub)
        run_dir = Path(sub.run_dir)
        data = data or build_data(cfg.data, seed=cfg.seed)
        model, _ = model_from_checkpoint(run_dir / "checkpoints" / "best.pt")
        scr = evaluate_checkpoint(model, data, ["test"], as_dict(sub), device,
                                  transform=scramble_transform(t1.scramble_grid, cfg.seed), suffix=" scrambled")
        scr_metrics, scr_df = scr["test"]
        io.write_predictions(scr_df, run_dir / "eval" / f"predictions_test_scrambled{t1.scramble_grid}.csv.gz")
        extra = {}
        same_px = same_tile_grid(data.image_size, t1.scramble_grid, t1.get("report_tile_px"))
        if same_px:  # the report's tile size in pixels (its 4x4 grid on 224 px images = 56 px tiles)
            px = scramble_transform(same_px, cfg.seed)
            m = evaluate_checkpoint(model, data, ["test"], as_dict(sub), device, transform=px,
                                    suffix=f" scrambled {same_px}x{same_px}")["test"][0]
            extra[f"scrambled test ({t1.report_tile_px} px tiles)"] = m["top1"]
        ev = summary["eval"]
        pub = REPORT_TABLE1.get(label, (None, None, None))
        pretrained = bool(sub.model.get("pretrained"))
        rows.append({"model": label, "val": ev["val"]["top1"], "test": ev["test"]["top1"],
                     "scrambled test": scr_metrics["top1"], **extra,
                     "report val": pub[0], "report test": pub[1], "report scrambled": pub[2],
                     "init": "ImageNet" if pretrained else "scratch", "epochs": summary["epochs"],
                     "image_size": data.image_size, "width": sub.model.get("width", "torchvision"),
                     "train_s": round(summary["train_wall_s"]), "run_dir": str(run_dir)})
        raw[label] = {"run_dir": str(run_dir), "eval": ev, "scrambled_test": scr_metrics,
                      "summary": {k: v for k, v in summary.items() if k != "eval"},
                      "wall_s": time.perf_counter() - started}
    df = pd.DataFrame(rows)
    return Result(tables={"table1": df}, figures={"table1": table1_figure(df)}, raw=raw,
                  summary=" | ".join(f"{r['model']} {r['test']:.3f}/{r['scrambled test']:.3f}" for r in rows))


def same_tile_grid(image_size: int, grid: int, tile_px: int | None) -> int | None:
    """The grid whose tiles are closest to ``tile_px`` pixels, if ``grid`` gives other tiles (else None).

    Scrambling destroys every patch that straddles a tile border; with tiles smaller than q (e.g. the 4x4
    grid on the cpu profile's 112 px images: 28 px < 33) a BagNet-q loses all its intact patches, which the
    report's 56 px tiles never caused. So the table adds the report's tile size in pixels.
    """
    if not tile_px:
        return None
    g = max(1, round(image_size / tile_px))
    return g if g != grid else None


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
    g = same_tile_grid(size, t1.scramble_grid, t1.get("report_tile_px"))
    if not g:
        return ""
    return (f" ({size // t1.scramble_grid} px tiles, while the report's were {t1.report_tile_px} px: the column "
            f"`scrambled test ({t1.report_tile_px} px tiles)` uses a {g}x{g} grid, the report's tile size in pixels)")


def table1_header(cfg: DictConfig, wall_s: float) -> str:
    return (f"Table 1 of the 15-Scene reproducibility report, reproduced with profile "
            f"`{cfg.profile_name}`: {cfg.data.image_size} px images, BagNet width {cfg.bagnet_width} "
            f"(torchvision widths for the baselines), {cfg.trainer.epochs} epochs, seed {cfg.seed}; "
            f"scrambled = test images cut into a {cfg.table1.scramble_grid}x{cfg.table1.scramble_grid} grid, "
            f"tiles permuted (seeded){tile_note(cfg)}. `report *` columns are the published numbers; `init` says how each "
            f"model of ours started. Total wall time {wall_s / 60:.1f} min on {provenance()['device']}.")


OVERVIEW_COLUMNS = ["model", "profile", "val", "test", "scrambled test", "report val", "report test",
                    "report scrambled", "init", "image_size", "width", "epochs"]


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


def write_table1_overview(root: str | Path) -> list[Path]:
    overview = table1_overview(root)
    return io.write_table(overview[0], Path(root) / "table1", header=overview[1]) if overview else []


@task
def task_table1(cfg) -> Result:
    started = time.perf_counter()
    result = table1(cfg)
    wall = time.perf_counter() - started
    device, _ = setup(cfg)
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed, wall_s=wall)
    io.write_result(result, cfg.out_dir, prov, header=table1_header(cfg, wall))
    write_table1_overview(Path(cfg.out_dir).parent)
    print(f"done: table1 in {wall / 60:.1f} min: {result.summary} -> {cfg.out_dir}", flush=True)
    return result


# ---------------------------------------------------------------- ImageNet with official weights
PAPER_IMAGENET = {  # top-1, top-5 (fractions). BagNets: the paper; baselines: torchvision's model docs.
    "BagNet-9": (None, None), "BagNet-17": (None, 0.805), "BagNet-33": (None, 0.876),
    "ResNet-50": (0.7613, 0.9286), "VGG-16": (0.7159, 0.9038), "DenseNet-169": (0.7560, 0.9281),
}


def _weights_file(spec: dict, weights_dir: str | None) -> str | None:
    """A local copy of the model's release file in ``weights_dir``, if one is there."""
    if not weights_dir:
        return None
    from .models import bagnet as bagnet_mod, torchvision_models as tv
    from .models.weights import HASH_RE
    cfgs = {**{f"bagnet{q}": c for q, c in bagnet_mod.DEFAULT_CFGS.items()}, **tv.DEFAULT_CFGS}
    key = f"bagnet{spec.get('patch_size')}" if spec["name"] == "bagnet" else spec["name"]
    release = cfgs[key]["file"]
    path = Path(weights_dir) / release
    if path.is_file():
        return str(path)
    # torch.hub naming, '<stem>-<sha256 prefix>.<ext>': e.g. a checkpoint re-saved under its own hash
    m = HASH_RE.search(release)
    found = sorted(Path(weights_dir).glob(f"{release[:m.start()]}-*{release[m.end() - 1:]}")) if m else []
    return str(found[0]) if found else None


def imagenet_eval(cfg: DictConfig) -> Result:
    """Top-1/top-5 of pretrained models (1000-way) on ``cfg.split``, beside the published numbers."""
    from .train import build_model
    device, _ = setup(cfg)
    data = build_data(cfg.data, seed=cfg.seed)
    if data.num_classes != 1000:
        raise ConfigError(f"eval_imagenet needs 1000-way labels; data={cfg.data.name} has {data.num_classes} "
                          "classes (use data.label_space=imagenet1k)")
    rows, raw = [], {}
    for label, spec in cfg.imagenet_eval.models.items():
        spec = dict(spec)
        spec["weights"] = spec.get("weights") or _weights_file(spec, cfg.imagenet_eval.weights_dir)
        model = build_model({**spec, "pretrained": True}, 1000)
        metrics, df = evaluate_checkpoint(model, data, [cfg.split], as_dict(cfg), device)[cfg.split]
        pub = PAPER_IMAGENET.get(label, (None, None))
        rows.append({"model": label, "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
                     "published top1": pub[0], "published top5": pub[1]})
        raw[label] = {"metrics": metrics, "weights": spec["weights"] or "download"}
    df = pd.DataFrame(rows)
    return Result(tables={"imagenet": df}, raw=raw,
                  summary=" | ".join(f"{r['model']} {r['top1']:.3f}/{r['top5']:.3f}" for r in rows))


@task
def task_eval_imagenet(cfg) -> Result:
    started = time.perf_counter()
    result = imagenet_eval(cfg)
    device, _ = setup(cfg)
    wall = time.perf_counter() - started
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed, wall_s=wall)
    header = (f"Pretrained models on `{cfg.data.name}` ({cfg.split} split, root `{cfg.data.root}`), "
              f"{wall / 60:.1f} min on {prov['device']}. Published: BagNets from Brendel & Bethge (2019), "
              "baselines from torchvision's model documentation.")
    io.write_result(result, cfg.out_dir, prov, header=header)
    print(f"done: eval_imagenet: {result.summary} -> {cfg.out_dir}", flush=True)
    return result


# ---------------------------------------------------------------- the demo
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


def demo_checks(acc: pd.DataFrame, scrambling: pd.DataFrame, bagnets: list[str], cnn: str,
                grid: int = 4) -> list[dict]:
    """The effects the synthetic probe is built to show, each with its measured numbers."""
    a = acc.set_index("model")
    checks = []
    q_acc = [a.at[b, "all"] for b in bagnets]
    checks.append({"effect": "test accuracy rises with patch size q (BagNet-9 < 17 <= 33, 2 pt tolerance)",
                   "measured": ", ".join(f"{b} {v:.3f}" for b, v in zip(bagnets, q_acc)),
                   "holds": bool(q_acc[0] < q_acc[1] and q_acc[1] <= q_acc[2] + 0.02)})
    if "global_within_pair" in a.columns:
        g = {m: a.at[m, "global_within_pair"] for m in bagnets + [cnn]}
        checks.append({"effect": "global-arrangement pair at chance for every BagNet (within-pair accuracy "
                                 "0.5 +- 0.15), above it for the CNN (> 0.7)",
                       "measured": ", ".join(f"{m} {v:.3f}" for m, v in g.items()),
                       "holds": bool(all(abs(g[b] - 0.5) <= 0.15 for b in bagnets) and g[cnn] > 0.7)})
    if "mid_within_pair" in a.columns:
        m9, m33 = a.at[bagnets[0], "mid_within_pair"], a.at[bagnets[-1], "mid_within_pair"]
        checks.append({"effect": "mid-size pair: BagNet-9 near chance, BagNet-33 solves it (> 0.8)",
                       "measured": f"{bagnets[0]} {m9:.3f}, {bagnets[-1]} {m33:.3f}",
                       "holds": bool(abs(m9 - 0.5) <= 0.15 and m33 > 0.8)})
    s = scrambling[scrambling["condition"] == f"scrambled_{grid}x{grid}"].set_index("model")["top1_rel"]
    checks.append({"effect": f"{grid}x{grid} scrambling (tiles no smaller than the largest patch) hurts the CNN "
                             "more than every BagNet (top-1 relative to clean)",
                   "measured": ", ".join(f"{m} {s[m]:.3f}" for m in bagnets + [cnn] if m in s),
                   "holds": bool(cnn in s and all(s[cnn] < s[b] for b in bagnets if b in s))})
    return checks


DEMO_OUTPUTS = {
    "accuracy": "top-1 per model and class kind (local / mid / global); `*_within_pair` = accuracy inside "
                "a pair of classes made of the same parts (chance 0.5)",
    "scrambling": "signature 1: accuracy on clean, g x g tile-scrambled and texturised test images",
    "additivity": "signature 2: interaction of two occluded patches vs their distance (exactly 0 for "
                  "BagNet-q beyond q-1 px)",
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
        lines.append(f"Additivity: for patches farther apart than q-1 px the largest BagNet interaction is "
                     f"{bag_far:.2g} (float32 rounding; exactly 0 in exact arithmetic); the CNN's normalised "
                     f"interaction is {cnn_rows['normalized_interaction'].min():.2g} to "
                     f"{cnn_rows['normalized_interaction'].max():.2g} across distance bins.")
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
    if len(sens):
        for target, sub in sens.groupby("target", sort=False):
            rel = sub.set_index("method")["auc_vs_occlusion"]
            attributions = rel.drop([m for m in ("bagnet", "occlusion", "random") if m in rel.index])
            lines.append(f"Sensitivity ({target}): area under the logit-drop curve relative to occlusion: BagNet "
                         f"heatmap {rel.get('bagnet', float('nan')):.2f}, attributions of the {target} itself "
                         f"{attributions.min():.2f}-{attributions.max():.2f}, random {rel.get('random', float('nan')):.2f}. "
                         "Here the BagNet heatmap predicts the CNN's sensitivity "
                         + ("better than" if rel.get("bagnet", 0) > attributions.max() else "worse than")
                         + " the attribution methods (the paper found it better for DenseNet-169 on ImageNet; "
                           "one likely reason here: the CNN also uses the global arrangement, which no BagNet "
                           "heatmap encodes).")
    return lines


def demo_readme(checks: list[dict], wall_s: float, prov: dict, cfg: DictConfig,
                findings: list[str] | None = None) -> str:
    lines = ["# Demo: BagNets vs a CNN on the synthetic probe", "",
             f"Made by `make demo` ({wall_s / 60:.1f} min on {prov['device']}, commit `{prov['git_commit']}`, "
             f"{prov['time']}). Data: {cfg.data.image_size} px synthetic images, "
             f"{cfg.data.samples_per_class} training images per class; models: BagNet-9/17/33 of width "
             f"{cfg.bagnet_width} and a small CNN whose receptive field covers the image; "
             f"{cfg.trainer.epochs} epochs each. Classes and their ground truth: `bagnet/data/synthetic.py`.", "",
             "## Did the expected effects appear?", "", "| effect | measured | holds |", "|---|---|---|"]
    lines += [f"| {c['effect']} | {c['measured']} | {'yes' if c['holds'] else '**no**'} |" for c in checks]
    if findings:
        lines += ["", "## Other measurements", ""] + [f"- {f}" for f in findings]
    lines += ["", "## Outputs", "", "| folder | shows |", "|---|---|"]
    lines += [f"| `{k}/` | {v} |" for k, v in DEMO_OUTPUTS.items()]
    lines += ["", "Each folder holds its tables (`.csv` + `.md`), figures (`.png` + `.pdf`) and `raw.json` "
              "(numbers + provenance: config, commit, versions, device, seed, time).", ""]
    return "\n".join(lines)


def demo(cfg: DictConfig) -> tuple[dict[str, Result], list[dict]]:
    """Train BagNet-9/17/33 and the CNN on the synthetic probe, then every experiment on their test split."""
    from experiments import additivity, error_overlap, scrambling, sensitivity
    from .explain import heatmaps_result, patches_result
    d = cfg.demo
    device, _ = setup(cfg)
    run_dirs = {}
    for label, option in d.models.items():
        sub = with_model(cfg, option, task="train")
        task_train(sub)
        run_dirs[label] = Path(sub.run_dir)
    data = build_data(cfg.data, seed=cfg.seed)
    test = data.split("test")
    models = {k: model_from_checkpoint(r / "checkpoints" / "best.pt")[0].eval().to(device) for k, r in run_dirs.items()}
    preds = {k: pd.read_csv(r / "eval" / "predictions_test.csv.gz") for k, r in run_dirs.items()}

    def sig(name):
        return {**as_dict(cfg.signatures[name]), "seed": cfg.seed, "device": str(device)}
    kw = dict(classes=data.classes, mean=data.mean, std=data.std)
    acc = kind_accuracy(preds, data.classes, data.info.get("class_kinds", {}))
    results = {"accuracy": Result(tables={"accuracy": acc}, summary="accuracy per class kind")}
    results["scrambling"] = scrambling.run(models, test, sig("scrambling"), **kw)
    results["additivity"] = additivity.run(models, test, sig("additivity"), **kw)
    results["error_overlap"] = error_overlap.run(preds, data.classes, sig("error_overlap"))
    results["sensitivity"] = sensitivity.run(models, test, sig("sensitivity"), **kw)
    bagnets = {k: m for k, m in models.items() if k in d.bagnets}
    results["heatmaps"] = heatmaps_result(bagnets, test, data.classes, data.mean, data.std, d.heatmap_images,
                                          cfg.seed, device)
    results["patches"] = patches_result(bagnets, test, data.classes, data.mean, data.std, k=d.patches_k,
                                        per_class_images=d.patches_images, device=device)
    checks = demo_checks(acc, results["scrambling"].tables["accuracy"], list(d.bagnets), d.cnn,
                         grid=intact_patch_grid(cfg.signatures.scrambling.grids, data.image_size,
                                                max(models[b].patch_size for b in d.bagnets)))
    results["accuracy"].tables["checks"] = pd.DataFrame(checks)
    return results, checks


def rebuild_demo_readme(out: str | Path) -> list[Path]:
    """Re-write ``out/README.md`` of a finished demo from its raw.json files (scripts/render_results.py)."""
    out = Path(out)
    blobs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/raw.json")}
    if "accuracy" not in blobs:
        return []
    prov = blobs["accuracy"]["provenance"]
    cfg = OmegaConf.create(prov["config"])
    results = {k: Result(tables={n: pd.DataFrame(t) for n, t in (b.get("tables") or {}).items()})
               for k, b in blobs.items()}
    checks = results["accuracy"].tables["checks"].to_dict(orient="records")
    findings = demo_findings(results, list(cfg.demo.bagnets), cfg.demo.cnn)
    return [io.write_text(demo_readme(checks, prov.get("wall_s", float("nan")), prov, cfg, findings),
                          out / "README.md")]


@task
def task_demo(cfg) -> dict[str, Result]:
    started = time.perf_counter()
    results, checks = demo(cfg)
    wall = time.perf_counter() - started
    device, _ = setup(cfg)
    prov = provenance(config=as_dict(cfg), device=device, seed=cfg.seed, wall_s=wall)
    out = Path(cfg.out_dir)
    for name, result in results.items():
        io.write_result(result, out / name, prov)
    findings = demo_findings(results, list(cfg.demo.bagnets), cfg.demo.cnn)
    io.write_text(demo_readme(checks, wall, prov, cfg, findings), out / "README.md")
    held = sum(c["holds"] for c in checks)
    print(f"done: demo in {wall / 60:.1f} min; {held}/{len(checks)} expected effects held -> {out}", flush=True)
    return results
