"""Table 1, the demo, make eval-imagenet, heatmaps and the signature tasks, end to end on tiny configs."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bagnet.errors import ConfigError
from bagnet.io import result_digest
from bagnet.config import compose
from bagnet.provenance import git_commit

TINY = ["data=synthetic", "data.image_size=64", "data.samples_per_class=6", "data.val_per_class=3",
        "data.test_per_class=4", "debug=fast", "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
        "trainer.batch_size=4", "device=cpu", "bagnet_width=4"]


TABLE1 = ["experiment=table1", "init=scratch", *TINY, "pipeline.extra_seeds=[1]", "pipeline.seed_models=[BagNet-33]"]
# the fast suite's Table 1: the reference, and the two BagNets of a contrast pair and of the seed runs
THREE = [f"~table1.models.scratch.{label}" for label in ("DenseNet-121", "DenseNet-169", "CBAM-ResNet-50", "BagNet-9")]


def test_table1_pipeline_on_three_models(tmp_path, run_in_process):
    """make reproduce-table1 on ResNet-50, BagNet-17 and BagNet-33 (every model: test_table1_pipeline_tiny)."""
    cfg, result = run_in_process(*TABLE1, *THREE)
    assert_table1(cfg, result, ["ResNet-50", "BagNet-17", "BagNet-33"],
                  [("BagNet-33", "ResNet-50"), ("BagNet-17", "ResNet-50"), ("BagNet-33", "BagNet-17")])
    # a second call reuses the finished runs instead of retraining them
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")}
    assert len(mtimes) == 4
    run_in_process(*TABLE1, *THREE)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")} == mtimes


def test_table1_refuses_a_scrambled_test_it_cannot_read_before_training(tmp_path, run_in_process):
    for bad in ("experiments.scrambling.num_images=10", "experiments.scrambling.per_image=false",
                "pipeline.experiments=[accuracy]", "split=val", "experiments.scrambling.image_size=96",
                "table1.reference=ResNet50", "table1.contrast_pairs=[[BagNet-33,BagNet9]]"):
        with pytest.raises(ConfigError, match="^table1: "):
            run_in_process(*TABLE1, *THREE, bad)
    assert not (tmp_path / "runs" / "train").exists()

def test_table1_refuses_runs_evaluated_on_a_subset(tmp_path):
    """A run whose test predictions cover other images than the scrambled test (trainer.max_eval_images numbers a
    capped subset by its own positions) is refused: Table 1 reads test and scrambled test on the same images."""
    from types import SimpleNamespace
    from bagnet.config import compose
    from bagnet.io import write_predictions
    from experiments.table1 import per_image_correctness
    cfg = compose(["experiment=table1", "init=scratch", "data=synthetic", "data.image_size=64"])
    write_predictions(pd.DataFrame({"index": range(4), "label": [0, 1, 0, 1], "pred": [0, 1, 1, 1]}),
                      tmp_path / "eval" / "predictions_test.csv.gz")
    sub = SimpleNamespace(cfg=SimpleNamespace(run_dir=str(tmp_path), trainer={"max_eval_images": 4}))
    rows = pd.DataFrame([{"model": "R", "condition": c, "index": i, "correct": True}
                         for c in ("clean", "scrambled_4x4") for i in range(6)])
    with pytest.raises(ConfigError, match=r"^table1: R's test predictions cover 4 images, the scrambled test 6"):
        per_image_correctness(sub, "R", rows, cfg)
    same = per_image_correctness(sub, "R", rows[rows["index"] < 4], cfg)
    assert list(same["test"]) == [1.0, 1.0, 0.0, 1.0] and same["scrambled test"].eq(1.0).all()

def assert_table1(cfg, result, labels: list[str], contrast_pairs: list[tuple[str, str]]) -> None:
    """Every cell, contrast and seed row of a tiny Table 1 recomputed from the files its runs wrote."""
    table = result.tables["table1"]
    assert list(table["model"]) == labels
    # every cell is recomputed from the per-image prediction files the runs wrote and the scrambling experiment's
    # per-image table of each model (a wrong split, a clean file read as scrambled, a ratio of the wrong columns
    # or a scrambled image of another model fails here)
    g = cfg.experiments.scrambling.grids[0]
    for _, row in table.iterrows():
        ev = Path(row["run_dir"]) / "eval"
        acc = {name: pd.read_csv(ev / f"predictions_{name}.csv.gz").eval("pred == label").mean() for name in ("val", "test")}
        per_image = pd.read_csv(next((Path(cfg.run_dir) / "scrambling" / "all").glob("per_image.csv*")))
        per_image = per_image[per_image["model"] == row["model"]]
        for name in ("clean", f"scrambled_{g}x{g}"):
            acc[name] = (per_image.query("condition == @name").eval("pred == label")).mean()
        assert (row["val"], row["test"], row["scrambled test"], row["kept"]) == pytest.approx(
            (acc["val"], acc["test"], acc[f"scrambled_{g}x{g}"], acc[f"scrambled_{g}x{g}"] / acc["clean"]),
            nan_ok=True), row["model"]
        for col in ("val", "test", "scrambled test", "kept"):
            assert np.isnan(row[f"{col}_lo"]) or row[f"{col}_lo"] <= row[col] <= row[f"{col}_hi"], (row["model"], col)
    # contrasts: each model minus ResNet-50 on the same images, equal to the difference of the table's cells
    con = result.tables["contrasts"].set_index(["model", "minus", "metric"])
    t = table.set_index("model")
    for label, minus in contrast_pairs:
        for metric in ("test", "kept"):
            assert con.loc[(label, minus, metric), "difference"] == pytest.approx(
                t.loc[label, metric] - t.loc[minus, metric], nan_ok=True), (label, metric)
    assert "ResNet-50" not in con.index.get_level_values(0)
    # the seed runs: seed 0 is the table's own run, seed 1 a new run dir; the spread is over both
    spread = result.tables["seed_spread"].set_index(["model", "metric"])
    bag = result.tables["seeds"].set_index("seed")
    assert list(bag["model"]) == ["BagNet-33"] * 2 and bag.loc[0, "run_dir"] == table["run_dir"].iloc[-1]
    assert "seed1" in bag.loc[1, "run_dir"]
    # the seed run's scrambled cells are its own images' (read under its own label, in the seed run's store), with
    # the first seed's scrambles
    g = cfg.experiments.scrambling.grids[0]
    stores = [pd.read_csv(f) for f in Path(cfg.paths.runs_dir).rglob("scrambling/all/per_image.csv*")]
    seed1 = next(s for s in stores if "BagNet-33 seed 1" in set(s["model"]))
    mine = seed1[seed1["model"] == "BagNet-33 seed 1"]
    assert bag.loc[1, "scrambled test"] == pytest.approx(mine.query(f"condition == 'scrambled_{g}x{g}'")["correct"].mean())
    assert bag.loc[1, "kept"] == pytest.approx(mine.query(f"condition == 'scrambled_{g}x{g}'")["correct"].mean()
                                               / mine.query("condition == 'clean'")["correct"].mean(), nan_ok=True)
    assert spread.loc[("BagNet-33", "test"), "mean"] == pytest.approx(bag["test"].mean())
    assert spread.loc[("BagNet-33", "test"), "n_seeds"] == 2
    out = Path(cfg.out_dir)
    written = pd.read_csv(out / "table1.csv")
    assert len(written) == len(labels) and {"val", "test", "scrambled test"} <= set(written.columns)
    assert "scrambled" in (out / "table1.md").read_text()
    from experiments.table1 import table1_overview
    overview, _ = table1_overview(out.parent)  # every profile's table side by side (make render-results)
    assert list(overview["profile"]) == [out.name] * len(labels) and list(overview["model"]) == labels
    raw = json.loads((out / "raw.json").read_text())
    assert raw["provenance"]["git_commit"] and raw["provenance"]["config"]["pipeline"]["report"] == "table1"
    for label, entry in raw["raw"].items():  # every cell comes from a run dir with its config
        if label != "pipeline":                  # what the pipeline returned: models, numerics, seed runs
            assert (Path(entry["run_dir"]) / "config.yaml").is_file(), label
    assert set(raw["raw"]["pipeline"]["seed_runs"]) == {"BagNet-33 seed 1"}
    # the scrambling part beside the table (its per-image table stays in the run dir: tens of thousands of rows)
    assert (out / "scrambling" / "accuracy.csv").is_file() and not list((out / "scrambling").glob("per_image*"))
    assert (out / "training.csv").is_file()
    # scripts/render_results.py finds the report's figure maker from the saved config (task: pipeline, report: table1)
    import runpy
    makers = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "render_results.py"))["figure_makers"]
    assert makers(out / "raw.json") is not None and "table1" in makers(out / "raw.json")(
        {"table1": pd.read_csv(out / "table1.csv")})
    assert Image.open(out / "table1.png").size[0] > 100


@pytest.mark.slow   # minutes on 2 cores: make test-slow / test-full (CI runs both)
def test_table1_pipeline_tiny(tmp_path, run_in_process):
    """Every model of Table 1, then make signatures on its runs. The fast suite runs three models:
    test_table1_pipeline_on_three_models."""
    cfg, result = run_in_process(*TABLE1)
    assert_table1(cfg, result, ["ResNet-50", "DenseNet-121", "DenseNet-169", "CBAM-ResNet-50", "BagNet-9",
                                "BagNet-17", "BagNet-33"],
                  [("BagNet-33", "ResNet-50"), ("DenseNet-121", "ResNet-50"), ("BagNet-33", "BagNet-17")])
    table = result.tables["table1"]
    # a second call reuses the finished runs instead of retraining them
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")}
    run_in_process(*TABLE1)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")} == mtimes

    # make signatures: experiment=signatures finds exactly these seven runs and VGG-16 trained by the same recipe
    vgg, _ = run_in_process("task=train", "model=vgg16_bn", "experiment=table1", "init=scratch", *TINY,
                            "trainer.fused_optimizer=true")
    labels = set(table["model"]) | {"VGG-16"}
    sig, res = run_in_process("experiment=signatures", *TINY, "pipeline.experiments=[error_overlap,scrambling]",
                              "experiments.scrambling.grids=[2]", "experiments.scrambling.num_images=4",
                              "experiments.scrambling.texture=false")
    assert {str(v) for v in sig.models.values()} == set(table["run_dir"]) | {vgg.run_dir}
    # debug=fast (in TINY) writes under runs/, never over results/; each experiment into a folder of its own
    out = tmp_path / "runs" / "debug" / "results" / "signatures" / "synthetic" / "default-scratch"
    assert Path(sig.out_dir) == out and all((out / n / "raw.json").is_file() for n in ("error_overlap", "scrambling"))
    pairs = res.parts["error_overlap"].tables["pairs"]
    assert len(pairs) == 28 and set(pairs["model_a"]) | set(pairs["model_b"]) == labels
    assert set(res.parts["scrambling"].tables["accuracy"]["model"]) == labels


def test_pipeline_runs_each_experiment_and_resumes_from_its_units(tmp_path, run_in_process):
    """task=pipeline (make signatures) runs every experiment of pipeline.experiments into its own folder; a
    second call reuses every saved unit (per model for additivity) instead of computing it again."""
    b9, _ = run_in_process("task=train", "model=bagnet9", *TINY)
    cnn, _ = run_in_process("task=train", "model=small_cnn", "model.width=4", *TINY)
    args = ["task=pipeline", *TINY, f"+models.B9={b9.run_dir}", f"+models.CNN={cnn.run_dir}",
            "pipeline.experiments=[additivity,error_overlap]", "experiments.additivity.num_images=2",
            "experiments.additivity.patch_sizes=[8]", "out_dir=" + str(tmp_path / "sig")]
    run_in_process(*args)
    units = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("unit.pt")}
    assert {p.parent.name for p in units if p.parent.parent.name == "additivity"} == {"B9", "CNN"}
    for name in ("additivity", "error_overlap"):
        assert (tmp_path / "sig" / name / "raw.json").is_file(), name
    run_in_process(*args, "overwrite=true")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("unit.pt")} == units


@pytest.mark.slow   # 33 s of make test's 5 min; make demo (the README's first command) runs this pipeline in full
def test_demo_pipeline_tiny(tmp_path, run_in_process):
    """make demo at 64 px, width 4, one step per model (seconds), and its documents rebuilt from raw.json."""
    cfg, demo = run_in_process("experiment=demo", *TINY, "experiments.heatmaps.num_images=2",
                               "experiments.patches.k=2", "experiments.patches.per_class_images=4",
                               "experiments.scrambling.num_images=16", "experiments.additivity.num_images=2",
                               "experiments.sensitivity.num_images=2", "experiments.sensitivity.ig_steps=4",
                               "experiments.scrambling.texture_patch=9")
    results = demo.parts
    out = Path(cfg.out_dir)
    promised = {"accuracy": ["accuracy", "checks"], "scrambling": ["accuracy"], "additivity": ["interaction"],
                "error_overlap": ["pairs", "per_class"], "sensitivity": ["logit_drop"], "heatmaps": ["heatmaps"],
                "patches": ["patches"]}
    for folder, tables in promised.items():
        assert set(tables) <= set(results[folder].tables), folder
        for t in tables:
            assert (out / folder / f"{t}.csv").is_file() and (out / folder / f"{t}.md").is_file()
        for name in results[folder].figures:
            assert Image.open(out / folder / f"{name}.png").size[0] > 50
            assert (out / folder / f"{name}.pdf").stat().st_size > 0
        assert json.loads((out / folder / "raw.json").read_text())["provenance"]["seed"] == 0
    readme = (out / "README.md").read_text()
    assert "expected effects" in readme and "| `sensitivity/` |" in readme and "Additivity: " in readme
    checks = pd.read_csv(out / "accuracy" / "checks.csv")
    assert len(checks) == 9 and checks["measured"].str.contains(r"\[", regex=True).all()  # each states its CI
    # each effect with its negative control, then the sensitivity instrument's control on the demo's BagNet
    assert list(checks["kind"]) == ["effect", "negative control"] * 4 + ["instrument control"]
    groups = results["scrambling"].tables["accuracy_by_group"]
    shown = groups.dropna(subset=["top1_rel"])        # NaN: a tiny model with no clean hit on those classes
    assert set(groups["group"]) == {"local", "global"} and (shown["top1_rel_lo"] <= shown["top1_rel"]).all()

    # scripts/render_results.py rebuilds tables and the table-borne figures from raw.json alone
    import runpy
    render = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "render_results.py"))["render"]
    rebuilt = {"scrambling": ["accuracy_vs_grid"], "additivity": ["interaction_vs_distance"],
               "error_overlap": ["kappa_matrix", "class_accuracy_scatter"], "sensitivity": ["logit_drop_vs_n"]}
    for folder, figures in rebuilt.items():
        first_table = promised[folder][0]
        before = {ext: (out / folder / f"{first_table}.{ext}").read_text() for ext in ("csv", "md")}
        for name in figures:
            (out / folder / f"{name}.png").unlink()
        (out / folder / f"{first_table}.csv").unlink()
        render(out / folder / "raw.json")
        pdfs = {name: (out / folder / f"{name}.pdf").read_bytes() for name in figures}
        render(out / folder / "raw.json")
        for ext in ("csv", "md"):   # the same text, missing values included ("–", never "None")
            assert (out / folder / f"{first_table}.{ext}").read_text() == before[ext], (folder, ext)
        for name in figures:
            assert Image.open(out / folder / f"{name}.png").size[0] > 50, (folder, name)
            assert (out / folder / f"{name}.pdf").read_bytes() == pdfs[name], (folder, name)  # no timestamp
    rebuilt = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "render_results.py"))[
        "rebuild_demo_readme"](out)
    assert rebuilt == readme


def _preds(correct_by_class: dict[int, float], n: int = 60, wrong_as=None, seed: int = 0) -> pd.DataFrame:
    """Predictions over classes 0..4 (n images each) whose accuracy per class is given; a wrong answer is
    ``wrong_as[c]`` (e.g. the other class of a pair) or the next class."""
    rng = np.random.default_rng(seed)
    rows, i = [], 0
    for c, p in correct_by_class.items():
        for ok in rng.random(n) < p:
            wrong = (wrong_as or {}).get(c, (c + 1) % 5)
            rows.append({"index": i, "label": c, "pred": c if ok else wrong})
            i += 1
    return pd.DataFrame(rows)


@pytest.mark.parametrize("r", [0.9, 0.5])
def test_demo_checks_verdicts_follow_the_intervals(r):
    from experiments.demo_checks import demo_checks
    classes = ["l0", "m0", "m1", "g0", "g1"]
    kinds = {"l0": "local", "m0": "mid", "m1": "mid", "g0": "global", "g1": "global"}
    swap = {1: 2, 2: 1, 3: 4, 4: 3}                       # a pair's errors go to the other class of the pair
    bag9 = _preds({0: 1, 1: .5, 2: .5, 3: .5, 4: .5}, wrong_as=swap, seed=1)
    bag17 = _preds({0: 1, 1: 1, 2: 1, 3: .5, 4: .5}, wrong_as=swap, seed=2)
    bag33 = bag17.copy()                                  # as good as BagNet-17 (the probe: both ~6/7)
    cnn = _preds({c: 1.0 for c in range(5)})
    scr = pd.DataFrame({"model": ["B9", "B17", "B33", "CNN"], "condition": ["scrambled_2x2"] * 4,
                        "top1_rel": [1.0, .95, .9, .3], "top1_rel_lo": [.97, .9, .85, .2],
                        "top1_rel_hi": [1.0, 1.0, .95, .4]})
    preds = {"B9": bag9, "B17": bag17, "B33": bag33, "CNN": cnn}
    run = lambda p: [c["holds"] for c in demo_checks(p, classes, kinds, scr, ["B9", "B17", "B33"], "CNN", grid=2)]  # noqa: E731
    checks = demo_checks(preds, classes, kinds, scr, ["B9", "B17", "B33"], "CNN", grid=2)
    assert [c["kind"] for c in checks] == ["effect", "negative control"] * 3 + ["effect"]
    assert [c["holds"] for c in checks] == [True] * 7, checks
    assert all("[" in c["measured"] for c in checks)          # every check states its interval
    # with the probe's class groups: scrambling judged within the global pair, and its negative control
    groups = pd.DataFrame([{"model": m, "group": g, "condition": "scrambled_2x2", "top1_rel": t, "top1_rel_lo": t - .05,
                            "top1_rel_hi": t + .05, "within_rel": w, "within_rel_lo": w - .1, "within_rel_hi": w + .1}
                           for m, (t, w) in {"B9": (1, 1), "B17": (1, 1), "B33": (.97, 1), "CNN": (1, .5)}.items()
                           for g in ("local", "global")])
    grouped = demo_checks(preds, classes, kinds, scr, ["B9", "B17", "B33"], "CNN", grid=2, by_group=groups)
    assert [c["kind"] for c in grouped[-2:]] == ["effect", "negative control"] and all(c["holds"] for c in grouped)
    groups.loc[groups["model"] == "CNN", ["within_rel", "within_rel_lo", "within_rel_hi"]] = [.9, .8, 1.0]
    groups.loc[groups["model"] == "B33", "top1_rel_lo"] = .8          # a BagNet hurt on the local classes
    assert [c["holds"] for c in demo_checks(preds, classes, kinds, scr, ["B9", "B17", "B33"], "CNN", grid=2,
                                            by_group=groups)][-2:] == [False, False]
    # the same effects, measured too weakly: overlapping intervals must not count
    scr.loc[3, ["top1_rel", "top1_rel_lo", "top1_rel_hi"]] = [.8, .6, .9]
    weak = {**preds, "B17": _preds({0: 1, 1: .55, 2: .55, 3: .5, 4: .5}, wrong_as=swap, seed=4),
            "CNN": _preds({0: 1, 1: 1, 2: 1, 3: .75, 4: .75}, wrong_as=swap, seed=5)}
    assert run(weak) == [False, True, False, True, True, True, False]
    # negative controls that fire: BagNet-9 worse on the local class; BagNets that do not see the global
    # parts (their global errors go to the local class) and a BagNet-9 blind to the dots
    lost = _preds({0: .8, 1: .5, 2: .5, 3: .5, 4: .5}, wrong_as={**swap, 1: 0, 2: 0, 3: 0, 4: 0}, seed=6)
    assert run({**preds, "B9": lost})[1::2] == [False, False, False]
    # the sensitivity instrument's control: the BagNet's heatmap ranking on itself against occlusion's
    drop = lambda r: pd.DataFrame([{"target": "B33", "control": True, "method": m, "auc": a, "auc_lo": a - .1,  # noqa: E731
                                    "auc_hi": a + .1, "auc_vs_occlusion": a / 2.0} for m, a in (("bagnet", r * 2), ("occlusion", 2.0))])
    assert [c["holds"] for c in demo_checks(preds, classes, kinds, scr, ["B9", "B17", "B33"], "CNN", grid=2,
                                            logit_drop=drop(r)) if c["kind"] == "instrument control"] == [r >= .8]
    # too few images for the equivalence test's margin: the at-chance checks cannot be tested, not "held"
    few = {m: _preds(c, n=30, wrong_as=swap, seed=k) for k, (m, c) in enumerate(
        {"B9": {0: 1, 1: .5, 2: .5, 3: .5, 4: .5}, "B17": {0: 1, 1: 1, 2: 1, 3: .5, 4: .5},
         "B33": {0: 1, 1: 1, 2: 1, 3: .5, 4: .5}, "CNN": {c: 1.0 for c in range(5)}}.items())}
    verdicts = run(few)
    assert verdicts[2] is None and verdicts[4] is None, verdicts


def test_eval_imagenet_pipeline_with_local_weights(tmp_path, run_in_process):
    """The official-weights pipeline on a tiny fake ImageNet tree, with weights saved locally."""
    from bagnet import create_model
    from bagnet.models.bagnet import DEFAULT_CFGS
    root = tmp_path / "imagenet"
    for c, wnid in enumerate(("n01440764", "n03888257")):  # tench (0), parachute (701)
        for s, split in enumerate(("train", "val")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(2):  # all distinct: byte-identical images would be dropped as duplicates
                Image.new("RGB", (40, 48), (i * 90, 30 + 60 * c, 100 + 50 * s)).save(root / split / wnid / f"{i}.JPEG")
    weights = tmp_path / "weights"
    weights.mkdir()
    # The release name claims the release's hash, so a local checkpoint goes under its own hash (torch.hub
    # naming); the pipeline finds it by stem and fetch_state_dict holds it to that hash.
    tmp = weights / "tmp.pth.tar"
    torch.save(create_model("bagnet9", width=64).state_dict(), tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    assert not DEFAULT_CFGS[9]["file"].endswith(f"-{digest}.pth.tar")
    tmp.rename(weights / f"bagnet8-{digest}.pth.tar")
    # only BagNet-9 has local weights; the others would try to download
    _, result = run_in_process("experiment=eval_imagenet", "data=imagenette",
                               f"data.root={root}", "data.label_space=imagenet1k", "data.image_size=32", "device=cpu",
                               "trainer.progress=false", f"weights_dir={weights}",
                               edit=lambda c: setattr(c, "models",
                                                      {"BagNet-9": {"name": "bagnet", "patch_size": 9, "pretrained": True}}))
    row = result.parts["accuracy"].tables["accuracy"].iloc[0]
    assert row["model"] == "BagNet-9" and row["n"] == 4
    assert pd.isna(row["published top5"])
    assert result.raw["numerics"]["cuda_matmul_allow_tf32"] is False      # pipeline.tf32: false


def test_eval_imagenet_on_real_imagenette_mini(tmp_path, run_in_process, real_data):
    """Real ImageNet photos, 1000-way labels, a full-width BagNet-9 saved in the release format whose head
    is fitted (least squares on its own features of these val images, preprocessed as ImageNet eval does)
    to answer each image's true ImageNet class: the pipeline must then score top-1 = 1. A wrong label
    mapping (compact 0..9 instead of the wnid's ImageNet index), other normalisation or another crop
    changes the answer and fails this test. Three photos of each of the 10 classes (a copy of the first ones)."""
    import shutil

    from bagnet import create_model
    from bagnet.data import build_data, build_loader
    root = tmp_path / "imagenette-3"
    for folder in sorted((real_data("imagenette-mini", "val") / "val").iterdir()):
        (root / "val" / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:3]:
            shutil.copy(f, root / "val" / folder.name / f.name)
    size = 64
    data = build_data({"name": "imagenette", "root": str(root), "image_size": size, "label_space": "imagenet1k",
                       "val_from_train": 0})
    model = create_model("bagnet9").eval()
    feats, labels = [], []
    model.fc.register_forward_hook(lambda m, inp, out: feats.append(inp[0].double()))
    with torch.no_grad():
        for x, y in build_loader(data.val, 50, train=False):
            model(x)
            labels.append(y)
    f, y = torch.cat(feats), torch.cat(labels)
    assert set(y.tolist()) == {0, 217, 482, 491, 497, 566, 569, 571, 574, 701}   # ImageNet indices of the wnids
    target = torch.nn.functional.one_hot(y, 1000).double()
    fa = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    w = torch.linalg.lstsq(fa, target).solution                                        # [2049, 1000]
    sd = model.state_dict()
    sd["fc.weight"], sd["fc.bias"] = w[:-1].T.float().contiguous(), w[-1].float().contiguous()
    weights = tmp_path / "bagnet8-local.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, weights)
    models = {"BagNet-9": {"name": "bagnet", "patch_size": 9, "weights": str(weights), "pretrained": True}}
    _, result = run_in_process("experiment=eval_imagenet", "data=imagenette",
                               f"data.root={root}", "data.label_space=imagenet1k", f"data.image_size={size}",
                               "device=cpu", "trainer.progress=false", "trainer.precision=fp32",
                               edit=lambda c: setattr(c, "models", models))
    row = result.parts["accuracy"].tables["accuracy"].iloc[0]
    assert row["n"] == 30  # the 3 val images of each of the 10 classes
    assert row["top1"] == 1.0


def test_eval_imagenet_without_weights_says_what_it_needs(tmp_path, monkeypatch, run_in_process):
    import urllib.request
    from urllib.error import URLError

    from bagnet.models.weights import WeightsError

    def offline(*a, **k):
        raise URLError("offline")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    torch.hub.set_dir(str(tmp_path / "hub"))
    root = tmp_path / "imagenet"
    (root / "val" / "n01440764").mkdir(parents=True)
    (root / "train" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(root / "val" / "n01440764" / "a.JPEG")
    Image.new("RGB", (40, 40)).save(root / "train" / "n01440764" / "a.JPEG")
    with pytest.raises(WeightsError, match="model.weights="):
        run_in_process("experiment=eval_imagenet", "data=imagenette", f"data.root={root}",
                       "data.label_space=imagenet1k", "data.image_size=32", "device=cpu")


@pytest.mark.parametrize("name", ["heatmaps", "patches"])
def test_explain_tasks_on_a_trained_bagnet(tmp_path, name, run_in_process):
    train, _ = run_in_process("task=train", "model=bagnet17", *TINY)
    cfg, result = run_in_process(f"task={name}", "model=bagnet17", *TINY, f"checkpoint={train.run_dir}",
                                 "experiments.heatmaps.num_images=2", "experiments.patches.per_class_images=2")
    out = Path(cfg.out_dir)
    assert result.figures and all((out / f"{f}.png").is_file() for f in result.figures)
    assert (out / f"{name}.csv").is_file()


def test_git_commit_is_dirty_only_for_code_changes(tmp_path):
    def git(*a):
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "results").mkdir()
    for f, text in {"a.py": "x = 1\n", "README.md": "hi\n", "results/t.json": "{}\n"}.items():
        (tmp_path / f).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "results/t.json").write_text('{"new": 1}\n')
    (tmp_path / "README.md").write_text("edited\n")
    assert git_commit(tmp_path) == clean          # results and docs don't change what code computes
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == clean + "-dirty"


def test_markdown_tables_write_missing_values_as_a_dash():
    """A column whose values are all missing comes back from raw.json as None (object dtype), not NaN."""
    from bagnet.io import to_markdown
    table = pd.DataFrame({"model": ["a", "b"], "r_top5": [None, None], "kappa": [float("nan"), 0.25]})
    assert to_markdown(table).splitlines()[2:] == ["| a | – | – |", "| b | – | 0.25 |"]


@pytest.mark.parametrize("init", ["scratch", "imagenet"])
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_signatures_find_the_table1_runs_of_their_init(init, profile):
    """make signatures INIT=... reads exactly the run dirs make reproduce-table1 INIT=... trains (and the
    VGG-16 run of make signatures' own training step), at either profile; results go to <profile>-<init>."""
    from experiments.training import model_overrides
    common = [f"init={init}", f"profile={profile}", "data=scene15"]
    t1 = compose(["experiment=table1", *common])
    expected = {label: compose(["task=train", "experiment=table1", *common, *model_overrides(spec)]).run_dir
                for label, spec in t1.pipeline.train.items()}
    vgg = ["model=vgg16", "model.pretrained=true"] if init == "imagenet" else ["model=vgg16_bn"]   # the Makefile's
    expected["VGG-16"] = compose(["task=train", "experiment=table1", *common, *vgg]).run_dir
    sig = compose(["experiment=signatures", *common])
    assert {k: str(v) for k, v in sig.models.items()} == expected
    assert Path(sig.out_dir).parts[-3:] == ("signatures", "scene15", f"{profile}-{init}")   # + /<experiment>/


def test_demo_seed_spread_reads_every_seed(tmp_path):
    """results/demo/README.md's spread across seeds: each seed's verdicts and the accuracy range, from files."""
    from experiments.demo import seed_spread
    checks = lambda held: pd.DataFrame([{"kind": "effect", "effect": "rises (CI)", "measured": "m", "holds": held},  # noqa: E731
                                        {"kind": "negative control", "effect": "not on local", "measured": "m",
                                         "holds": True}])
    acc = lambda a: pd.DataFrame({"model": ["B9"], "all": [a]})  # noqa: E731
    assert seed_spread(tmp_path, {"checks": checks(True), "accuracy": acc(0.7)}, 0) == []   # no other seed
    for k, (held, a) in {1: (False, 0.6), 2: (True, 0.8)}.items():
        (tmp_path / f"seed{k}" / "accuracy").mkdir(parents=True)
        blob = {"provenance": {"seed": k, "wall_s": 60.0 * k}, "tables": {"checks": checks(held).to_dict(orient="list"),
                                                                          "accuracy": acc(a).to_dict(orient="list")}}
        (tmp_path / f"seed{k}" / "accuracy" / "raw.json").write_text(json.dumps({**blob, "digest": result_digest(blob)}))
    text = "\n".join(seed_spread(tmp_path, {"checks": checks(True), "accuracy": acc(0.7)}, 0, 30.0))
    assert "seed 0: 1/1 expected effects and 1/1 negative controls held (0.5 min)" in text
    assert "seed 2: 1/1 expected effects and 1/1 negative controls held (2.0 min)" in text
    assert "seed 1: 0/1 expected effects" in text and "| effect: rises | supported: m | **contradicted**: m | supported: m |" in text
    assert "| B9 | 0.700 (0.600 to 0.800) |" in text


def test_an_experiment_runs_at_its_own_image_size(run_in_process, tiny_overrides):
    """``experiments.<name>.image_size``: that experiment's images at another side than the models were trained on
    (BagNets run at any size); an experiment on saved predictions refuses it (they were made at data.image_size)."""
    cfg, _ = run_in_process(*tiny_overrides)
    exp = [*tiny_overrides, "task=scrambling", "experiments.scrambling.num_images=4", "experiments.scrambling.grids=[2]",
           "experiments.scrambling.texture=false", "experiments.scrambling.num_examples=1", f"+models.B9={cfg.run_dir}"]
    _, own = run_in_process(*exp)
    _, larger = run_in_process(*exp, "experiments.scrambling.image_size=96", "overwrite=true")
    tiles = lambda r: set(r.tables["accuracy"]["tile"].dropna())
    assert tiles(own) == {"64x64", "32x32"} and tiles(larger) == {"96x96", "48x48"}   # clean, and 2 x 2 tiles
    with pytest.raises(ConfigError, match="experiments.accuracy.image_size"):
        run_in_process(*tiny_overrides, "task=accuracy", f"+models.B9={cfg.run_dir}", "experiments.accuracy.image_size=96")
