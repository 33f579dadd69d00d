"""make reproduce-imagenette: its targets read off the result tables (known tables, known readings), its report's
settings refused before training, and the real config shrunk and run end to end on imagenette-mini."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bagnet.errors import ConfigError
from bagnet.result import Result
from experiments.imagenette import parse_order, targets_table

SETTINGS = {"top1": {"ResNet-50": 0.85, "BagNet-33": 0.75}, "order": "BagNet-9 < BagNet-17 <= BagNet-33 < ResNet-50"}


def parts(r50=(0.80, 0.78, 0.82), b33=(0.77, 0.75, 0.79), contrasts=None, control=0.9) -> dict:
    acc = pd.DataFrame([{"model": m, "top1": t, "top1_lo": lo, "top1_hi": hi}
                        for m, (t, lo, hi) in (("ResNet-50", r50), ("BagNet-33", b33))])
    con = pd.DataFrame(contrasts or [
        {"model": "BagNet-17", "minus": "BagNet-9", "metric": "top1", "difference": 0.05, "lo": 0.02, "hi": 0.08},
        {"model": "BagNet-33", "minus": "BagNet-17", "metric": "top1", "difference": -0.01, "lo": -0.03, "hi": 0.01},
        {"model": "ResNet-50", "minus": "BagNet-33", "metric": "top1", "difference": 0.03, "lo": -0.01, "hi": 0.07}])
    drop = pd.DataFrame([{"target": "BagNet-33", "method": m, "control": True, "auc": a, "auc_vs_occlusion": a / 2.0}
                         for m, a in (("bagnet", 2 * control), ("occlusion", 2.0))])
    return {"accuracy": Result(tables={"accuracy": acc, "contrasts": con}),
            "sensitivity": Result(tables={"logit_drop": drop})}


def test_targets_are_read_off_the_tables_with_the_chains_relations():
    t = targets_table(parts(), SETTINGS).set_index("target")
    r50 = t.loc["ResNet-50 test top-1 >= 0.85"]
    assert not r50["met"] and r50["missed_by"] == pytest.approx(0.05) and r50["reading"] == "contradicted"
    b33 = t.loc["BagNet-33 test top-1 >= 0.75"]
    assert b33["met"] and pd.isna(b33["missed_by"]) and b33["reading"] == "not shown"   # the interval touches 0.75
    links = t[t.index.str.contains("paired difference")]
    # '<' needs the difference's interval above 0; '<=' only that it is not below 0
    assert list(links["met"]) == [True, True, False]
    assert list(links["reading"]) == ["supported", "not shown", "not shown"]
    ctrl = t.loc[t.index.str.startswith("sensitivity control")].iloc[0]
    assert ctrl["met"] and ctrl["measured"] == pytest.approx(0.9)
    failed = targets_table(parts(control=0.6), SETTINGS).iloc[-1]
    assert not failed["met"] and failed["missed_by"] == pytest.approx(0.2) and failed["reading"] == "contradicted"
    # '<=' is missed when the smaller model is better beyond its interval
    worse = parts(contrasts=[{"model": "BagNet-33", "minus": "BagNet-17", "metric": "top1", "difference": -0.05,
                              "lo": -0.08, "hi": -0.02}])
    row = targets_table(worse, {"order": "BagNet-17 <= BagNet-33"}).iloc[0]
    assert not row["met"] and row["reading"] == "contradicted"
    # a link whose contrast was not computed cannot be read
    assert targets_table(worse, {"order": "BagNet-9 < BagNet-17"}).iloc[0]["reading"] == "cannot test"


def test_a_missed_target_says_by_how_much_and_whether_its_model_was_still_learning():
    from experiments.imagenette import shortfall
    targets = targets_table(parts(), SETTINGS)
    training = pd.DataFrame({"model": ["ResNet-50", "BagNet-33"], "epochs": [20, 20],
                             "val_top1_rise_last_quarter": [0.041, 0.03]})
    lines = shortfall(targets, training)
    assert lines[2] == ("- Missed: ResNet-50 test top-1 >= 0.85, by 0.050: its val top-1 still rose by 0.041 over the "
                        "last quarter of its 20 epochs: under-trained, more epochs are the next thing to try.")
    assert len(lines) == 4                                   # BagNet-33 met its target: no line
    flat = training.assign(val_top1_rise_last_quarter=[0.005, 0.0])     # annealing's lift, not under-training
    assert shortfall(targets, flat)[2] == "- Missed: ResNet-50 test top-1 >= 0.85, by 0.050."
    assert shortfall(targets_table(parts(r50=(0.9, 0.88, 0.92)), SETTINGS), training) == []


def test_a_bad_chain_is_refused():
    assert parse_order("A < B <= C") == [("A", "<", "B"), ("B", "<=", "C")]
    for bad in ("A", "A <", "A > B", "A < B C"):
        with pytest.raises(ConfigError, match="imagenette.order"):
            parse_order(bad)


IMAGENETTE_MINI_SHRUNK = [
    "experiment=imagenette", "data.image_size=64", "data.cache=false", "device=cpu", "bagnet_width=4",
    "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.batch_size=4", "trainer.eval_batch_size=32",
    "trainer.progress=false", "~pipeline.train.ResNet-18", "~pipeline.train.BagNet-17", "~pipeline.train.BagNet-9",
    "pipeline.train.ResNet-50=resnet18", "pipeline.experiments=[accuracy,sensitivity]",
    "experiments.accuracy.contrasts=[[ResNet-50,BagNet-33]]", "imagenette.order='BagNet-33 < ResNet-50'",
    "experiments.sensitivity.targets=[ResNet-50]", "experiments.sensitivity.num_images=2",
    "experiments.sensitivity.methods=[bagnet,saliency,occlusion,random]", "experiments.sensitivity.max_regions=3",
    "experiments.sensitivity.report_n=[1,3]", "experiments.sensitivity.heatmap_stride=8"]


def test_a_target_naming_a_model_the_pipeline_lacks_is_refused_before_training(tmp_path, run_in_process, real_data):
    root = real_data("imagenette-mini", "val")
    with pytest.raises(ConfigError, match=r"imagenette: \['BagNet-9'\] are not models of the pipeline"):
        run_in_process(*IMAGENETTE_MINI_SHRUNK, f"data.root={root}", "imagenette.order='BagNet-9 < ResNet-50'")
    assert not (tmp_path / "runs" / "train").exists()


@pytest.mark.slow   # a minute on 2 cores: make test-slow / test-full (CI runs both)
def test_reproduce_imagenette_shrunk_on_imagenette_mini(tmp_path, run_in_process, real_data):
    """The real config, shrunk: trains, runs the experiments, writes the targets and the README."""
    root = real_data("imagenette-mini", "val")
    cfg, result = run_in_process(*IMAGENETTE_MINI_SHRUNK, f"data.root={root}", f"out_dir={tmp_path / 'out'}")
    targets = pd.read_csv(tmp_path / "out" / "targets.csv")
    assert list(targets["target"])[:2] == ["ResNet-50 test top-1 >= 0.85", "BagNet-33 test top-1 >= 0.75"]
    acc = result.parts["accuracy"].tables["accuracy"].set_index("model")
    assert targets.iloc[0]["measured"] == pytest.approx(acc.loc["ResNet-50", "top1"])
    assert "paired difference ResNet-50 - BagNet-33" in targets.iloc[2]["target"]
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "## Targets" in readme and "`sensitivity/`" in readme
    raw = json.loads((tmp_path / "out" / "raw.json").read_text())
    assert raw["provenance"]["config"]["pipeline"]["report"] == "imagenette"
    assert Path(cfg.out_dir) == tmp_path / "out"
    # the claims block reads what this pipeline ran (accuracy, sensitivity) and skips what it did not
    from reports.imagenette import block_imagenette_verdicts
    claims = block_imagenette_verdicts(tmp_path, "out")
    assert "| ResNet-50 more accurate than BagNet-33 (test top-1, paired) |" in claims
    assert "BagNet-33's heatmap predicts ResNet-50's occlusion sensitivity" in claims and "scrambling" not in claims


def write_imagenette_results(root: Path) -> None:
    """results/imagenette as the pipeline writes it (accuracy, error_overlap's reference table, the targets), from
    known tables."""
    from bagnet.io import write_result
    prov = {"device": "cpu: test", "git_commit": "abc", "time": "2026-12-06T00:00", "wall_s": 60.0,
            "config": {"data": {"image_size": 112}}}
    acc = pd.DataFrame([{"model": m, "n": 3925, "top1": t, "top1_lo": t - 0.01, "top1_hi": t + 0.01,
                         "top5": 0.97, "top5_lo": 0.96, "top5_hi": 0.98} for m, t in (("ResNet-50", 0.819),
                                                                                   ("BagNet-33", 0.774))])
    write_result(Result(tables={"accuracy": acc}), root / "imagenette" / "accuracy", prov)
    ref = pd.DataFrame([{"model_a": "ResNet-50", "model_b": "BagNet-33", "kappa": 0.55, "reference": "ResNet-50 vs X",
                         "reference_kappa": 0.6, "difference": -0.05, "lo": -0.08, "hi": -0.02,
                         "verdict": "contradicted (95% CI excludes 0 on the other side)"}])
    write_result(Result(tables={"versus_reference": ref}), root / "imagenette" / "error_overlap", prov)
    write_result(Result(tables={"targets": targets_table(parts(r50=(0.819, 0.809, 0.829)), SETTINGS)}),
                 root / "imagenette", prov)


def test_the_readme_block_renders_the_targets_from_the_files(tmp_path):
    """The README's Imagenette block (reports/readings.py) holds what the result files hold: each target met or
    missed and by how much, every model's interval, every pair against the reference pair."""
    from reports.readings import render_document
    write_imagenette_results(tmp_path)
    text = render_document("<!-- render: imagenette -->\n<!-- /render -->\n", tmp_path)
    assert "ResNet-50 0.819 [0.809, 0.829] / 0.970 [0.960, 0.980]" in text
    assert "| ResNet-50 test top-1 >= 0.85 | 0.819 [0.809, 0.829] | **no** | 0.031 | **contradicted** |" in text
    assert "pair's (ResNet-50 vs X, kappa 0.600)" in text and "ResNet-50 vs BagNet-33 -0.050 [-0.080, -0.020]." in text
    assert "Source: `results/imagenette/`" in text


def test_the_headline_gains_the_imagenette_row_once_its_results_exist(tmp_path):
    import shutil
    from reports.readings import block_headline
    root = Path(__file__).resolve().parents[1] / "results"
    shutil.copytree(root, tmp_path / "results", ignore=shutil.ignore_patterns("imagenette"))
    assert "Imagenette2" not in block_headline(tmp_path / "results")      # not run yet: no row
    write_imagenette_results(tmp_path / "results")
    row = next(line for line in block_headline(tmp_path / "results").splitlines() if "Imagenette2" in line)
    assert "models trained from scratch at 112 px" in row
    assert "ResNet-50 0.819 [0.809, 0.829], BagNet-33 0.774 [0.764, 0.784]" in row
    assert "targets met: 4/6 (ResNet-50 test top-1 >= 0.85 missed by 0.031" in row


def test_the_targets_are_checked_against_the_pipelines_models_without_data():
    """experiments.imagenette.check on the composed config alone (no photos needed): a target naming a model the
    pipeline does not train, or a chain that does not parse, is refused."""
    from bagnet.config import compose
    from experiments.imagenette import check
    check(compose(["experiment=imagenette"]))                       # the config as committed
    with pytest.raises(ConfigError, match=r"imagenette: \['BagNet-50'\] are not models of the pipeline"):
        check(compose(["experiment=imagenette", "+imagenette.top1.BagNet-50=0.9"]))
    with pytest.raises(ConfigError, match="imagenette.order"):
        check(compose(["experiment=imagenette", "imagenette.order='BagNet-9 > BagNet-17'"]))
    # a link the run could not read is neither met nor missed
    t = targets_table(parts(contrasts=[{"model": "BagNet-33", "minus": "BagNet-17", "metric": "top1",
                                        "difference": float("nan"), "lo": float("nan"), "hi": float("nan")}]),
                      {"order": "BagNet-17 <= BagNet-33"})
    assert t.iloc[0]["reading"] == "cannot test" and t.iloc[0]["met"] is None


def test_error_consistency_claims_read_each_bagnet_cnn_pair_against_the_cnn_pair(monkeypatch):
    """Known tables, known verdicts: a pair whose kappa difference to the CNN-CNN pair lies below 0 is contradicted,
    one that reaches 0 with kappa above 0 supported, one with kappa reaching 0 not shown; BagNet-BagNet pairs are
    no claim; a model below the learned floor makes its pairs untestable."""
    import reports.imagenette as ri
    import reports.verdicts as rv
    models = {"ResNet-50": 0.8, "ResNet-18": 0.78, "BagNet-33": 0.77, "BagNet-17": 0.74, "BagNet-9": 0.12}
    clean = pd.DataFrame([{"model": m, "condition": "clean", "top1": t, "top1_lo": t - 0.02, "top1_hi": t + 0.02}
                          for m, t in models.items()])
    pairs = pd.DataFrame([{"model_a": a, "model_b": b, "kappa": k, "kappa_lo": k - 0.05, "kappa_hi": k + 0.05}
                          for a, b, k in (("BagNet-33", "ResNet-50", 0.5), ("ResNet-18", "BagNet-17", 0.03),
                                          ("BagNet-33", "BagNet-17", 0.6), ("BagNet-9", "ResNet-50", 0.4),
                                          ("ResNet-50", "ResNet-18", 0.6))])
    ref = pd.DataFrame([{"model_a": a, "model_b": b, "reference": "ResNet-50 vs ResNet-18", "reference_kappa": 0.6,
                         "difference": d, "lo": d - 0.04, "hi": d + 0.04}
                        for a, b, d in (("BagNet-33", "ResNet-50", -0.02), ("ResNet-18", "BagNet-17", -0.2),
                                        ("BagNet-33", "BagNet-17", 0.0), ("BagNet-9", "ResNet-50", -0.2))])
    files = {"imagenette/scrambling": {"accuracy": clean},
             "imagenette/error_overlap": {"pairs": pairs, "versus_reference": ref,
                                          "per_class": pd.DataFrame({"class": range(10)})}}
    monkeypatch.setattr(rv, "load", lambda root, folder: (files[folder], {}))
    monkeypatch.setattr(ri, "load", lambda root, folder: (files[folder], {}))
    bagnets = {"BagNet-33", "BagNet-17", "BagNet-9"}
    got = {row[0].split(" err on")[0]: row[2] for row in ri.kappa_claims(Path("."), "imagenette", bagnets,
                                                                        rv.learned(Path("."), "imagenette"))}
    assert got["BagNet-33 and ResNet-50"] == "**supported**"
    assert got["ResNet-18 and BagNet-17"] == "**contradicted**"
    assert "BagNet-33 and BagNet-17" not in got
    assert got["BagNet-9 and ResNet-50"].startswith("cannot test (below the learned floor: BagNet-9")
    assert ri.kappa_claims(Path("."), "imagenette", bagnets, {})[1][1].startswith("ours")   # BagNet-17: not the paper's
    ref.loc[0, ["lo", "hi"]] = [float("nan")] * 2
    assert ri.kappa_claims(Path("."), "imagenette", bagnets, {})[0][2] == "cannot test (no interval)"
    ref.loc[0, ["lo", "hi"]] = [-0.1, 0.05]
    pairs.loc[0, "kappa_lo"] = -0.01
    assert ri.kappa_claims(Path("."), "imagenette", bagnets, {})[0][2] == "not shown"


def test_scrambling_claims_judge_only_conditions_where_the_bagnets_patches_survive():
    """BagNet-33 at 112 px: the 2x2 grid (56 px tiles) and 33 px texture leave it whole patches, the 4x4 grid (28 px)
    does not; a contradiction there is shown, not judged."""
    from reports.imagenette import scrambling_claims
    tiles = {"clean": "112x112", "scrambled_2x2": "56x56", "scrambled_4x4": "28x28", "texture": "33"}
    acc = pd.DataFrame([{"model": m, "condition": c, "tile": t} for m in ("BagNet-33", "ResNet-50")
                        for c, t in tiles.items()])
    con = pd.DataFrame([{"model": "BagNet-33", "minus": "ResNet-50", "condition": c, "difference": d, "lo": d - 0.05,
                         "hi": d + 0.05} for c, d in (("scrambled_2x2", 0.2), ("scrambled_4x4", -0.3),
                                                      ("texture", 0.1))])
    interaction = pd.DataFrame({"model": ["BagNet-33", "ResNet-50"], "exact_zero_from": [32.0, float("nan")]})
    (row,) = scrambling_claims({"accuracy": acc, "contrasts": con}, interaction, {})
    assert row[2] == "**supported**" and "4x4 -0.300 [-0.350, -0.250] (tiles < q: not judged)" in row[3]
    (blind,) = scrambling_claims({"accuracy": acc, "contrasts": con}, None, {})     # no q known: every condition
    assert blind[2] == "**contradicted**"
    assert scrambling_claims({"accuracy": acc}, interaction, {}) == []
