"""A pipeline is a config (experiments/pipeline.py) and accuracy a registered experiment: known answers and
refusals that come before anything trains or is written."""

import numpy as np
import pandas as pd
import pytest

from bagnet.errors import ConfigError
from experiments import accuracy


def predictions(correct: np.ndarray, labels: np.ndarray, n_classes: int = 3) -> pd.DataFrame:
    """Per-image predictions that are right exactly where ``correct``; top-5 holds every class."""
    pred = np.where(correct, labels, (labels + 1) % n_classes)
    df = pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "pred": pred})
    for k in range(5):
        df[f"top5_{k}"] = (pred + k) % n_classes if k < n_classes else -1
    return df


def test_accuracy_known_answer_and_paired_contrast():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 200)
    a = rng.permutation(np.arange(600) < 480)                    # 0.80
    b = a & (rng.random(600) < 0.625)                             # right only where A is: 0.5 +- noise
    preds = {"A": predictions(a, labels), "B": predictions(b, labels)}
    r = accuracy.run(preds, ["x", "y", "z"], {"contrasts": [["A", "B"]], "n_boot": 500})
    t = r.tables["accuracy"].set_index("model")
    assert t.loc["A", "top1"] == pytest.approx(0.8) and t.loc["B", "top1"] == pytest.approx(b.mean())
    assert (t["top5"] == 1).all() and (t["top1_lo"] < t["top1"]).all() and (t["top1"] < t["top1_hi"]).all()
    c = r.tables["contrasts"].iloc[0]
    assert c["difference"] == pytest.approx(0.8 - b.mean()) and c["lo"] > 0 and c["verdict"].startswith("supported")
    per_class = r.tables["per_class"].set_index("class")
    assert per_class.loc["y", "A"] == pytest.approx(a[labels == 1].mean()) and (per_class["n"] == 200).all()
    # the same model against itself: a difference of exactly 0, never "present"; reference= adds every model
    same = accuracy.run(preds, None, {"contrasts": [["A", "A"]], "reference": "B", "n_boot": 200}).tables["contrasts"]
    assert list(zip(same["model"], same["minus"])) == [("A", "A"), ("A", "B")]
    assert same.iloc[0]["difference"] == 0 and same.iloc[0]["verdict"].startswith("not shown")
    with pytest.raises(ConfigError, match="unknown: \\['C'\\]"):
        accuracy.run(preds, None, {"contrasts": [["A", "C"]]})


def test_pipeline_refuses_a_bad_list_before_anything_trains(tmp_path, run_in_process, tiny_overrides):
    for bad, message in ((["pipeline.experiments=[accuracy,scramblin]"], "unknown experiment 'scramblin'"),
                         (["pipeline.experiments=[]"], "pipeline.experiments is empty"),
                         (["pipeline.experiments=[scrambling]", "+experiments.scrambling.groups={g: [nope]}"],
                          r"groups.g: \['nope'\] are not classes"),
                         (["pipeline.experiments=[patches]", "experiments.patches.classes=[tench]"],
                          r"patches.classes: \['tench'\] are not classes"),
                         (["pipeline.experiments=[heatmaps]", "experiments.heatmaps.classes=[nope]"],
                          r"heatmaps.classes: \['nope'\] are not classes"),
                         (["pipeline.experiments=[accuracy]", "experiments.accuracy.image_size=96"],
                          "experiments.accuracy.image_size"),
                         (["pipeline.experiments=[accuracy]", "pipeline.report=nope"], "unknown pipeline.report"),
                         # a model a key names but the run lacks (a misspelt label) is found before the training
                         (["pipeline.experiments=[accuracy]", "experiments.accuracy.reference=B33"],
                          r"experiments.accuracy: \['B33'\] are not models of this run \(B9\)"),
                         (["pipeline.experiments=[error_overlap]", "experiments.error_overlap.reference=[B9,CNN]"],
                          r"experiments.error_overlap: \['CNN'\] are not models"),
                         (["pipeline.experiments=[sensitivity]", "experiments.sensitivity.targets=[resnet]"],
                          r"experiments.sensitivity: \['resnet'\] are not models"),
                         (["pipeline.experiments=[sensitivity]", "experiments.sensitivity.bagnet=B9",
                           "pipeline.seed_models=[B9]", "pipeline.extra_seeds=[1]"], "name models by label"),
                         (["pipeline.experiments=[accuracy]", "pipeline.seed_models=[B33]", "pipeline.extra_seeds=[1]"],
                          r"pipeline.seed_models: \['B33'\] are not labels of pipeline.train")):
        with pytest.raises(ConfigError, match=message):
            run_in_process("task=pipeline", *tiny_overrides, "+pipeline.train.B9=bagnet9", *bad)
        assert not (tmp_path / "runs" / "train").exists(), bad


def test_pipeline_trains_then_runs_the_listed_experiments(tmp_path, run_in_process, tiny_overrides):
    cfg, result = run_in_process("task=pipeline", *tiny_overrides, "+pipeline.train.B9=bagnet9",
                                 "+pipeline.train.B17={option: bagnet17, width: 4}",
                                 "pipeline.experiments=[accuracy,heatmaps]", "experiments.heatmaps.num_images=2",
                                 "experiments.accuracy.contrasts=[[B17,B9]]", f"out_dir={tmp_path / 'out'}")
    assert list(result.parts) == ["accuracy", "heatmaps"]
    assert list(result.tables["training"]["model"]) == ["B9", "B17"]
    assert set(result.parts["accuracy"].tables["accuracy"]["model"]) == {"B9", "B17"}
    out = tmp_path / "out"
    assert (out / "training.csv").is_file() and (out / "accuracy" / "contrasts.csv").is_file()
    assert (out / "heatmaps" / "heatmaps.png").is_file()
    assert {p.parent.name for p in (tmp_path / "runs" / "train").rglob("summary.json")} == {"debug-seed0"}


def test_the_pipelines_own_run_dir_is_not_its_trainings(tmp_path, run_in_process, tiny_overrides):
    """run_dir= on a pipeline's command line names the pipeline's store: each model still trains into a run dir
    of its own (it was inherited, and the second model was refused as another run in the first one's dir)."""
    own = tmp_path / "pipeline-store"
    run_in_process("task=pipeline", *tiny_overrides, "+pipeline.train.B9=bagnet9", "+pipeline.train.B17=bagnet17",
                   "pipeline.experiments=[accuracy]", f"run_dir={own}", f"out_dir={tmp_path / 'out'}")
    trained = sorted(p.parent for p in (tmp_path / "runs" / "train").rglob("summary.json"))
    assert len(trained) == 2 and own not in trained and trained[0] != trained[1]
