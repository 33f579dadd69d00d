"""Every signature's instrument proven on a known answer (experiments/controls.py): a hand-built BagNet
that only sees local patches and a hand-built model that only sees the arrangement of two parts. Each
check is a function, so each test also shows that the check fails when its instrument is broken."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from experiments import additivity, error_overlap, scrambling, sensitivity
from experiments.controls import ArrangementModel, blob_images, colour_bagnet, two_part_images

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
QUIET = {"progress": False}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------ 1. scrambling
def scrambling_control() -> dict:
    """Share of clean top-1 kept at 2x2 tiles: the BagNet-9 on its local task, the arrangement model on its."""
    bag = scrambling.run({"BagNet-9": colour_bagnet(9)}, blob_images(48, size=64, blobs=2, seed=3),
                         {**QUIET, "grids": [2], "texture": False, "num_examples": 1, "num_images": 48})
    glob = scrambling.run({"global": ArrangementModel()}, two_part_images(96, size=64, seed=3),
                          {**QUIET, "grids": [2], "texture": False, "num_examples": 1, "num_images": 96})
    row = lambda r, m: r.tables["accuracy"].set_index(["model", "condition"]).loc[(m, "scrambled_2x2")]
    return {"bagnet": row(bag, "BagNet-9"), "global": row(glob, "global")}


def scrambling_finds_it(c: dict) -> bool:
    return bool(c["bagnet"]["top1_rel_lo"] > 0.9 and c["global"]["top1_rel_hi"] < 0.8)


def test_scrambling_destroys_the_global_model_and_not_the_bagnet():
    c = scrambling_control()
    assert c["bagnet"]["top1"] == 1.0 and scrambling_finds_it(c)


def test_within_group_accuracy_is_the_decision_among_the_groups_classes():
    logits = torch.tensor([[0.0, 5.0, 4.0], [9.0, 1.0, 2.0]])
    assert scrambling.within_correct(logits, torch.tensor([2, 2]), [1, 2]).tolist() == [False, True]
    # on a two-class task the within-pair accuracy is top-1, and scrambling takes the arrangement model to chance
    glob = scrambling.run({"global": ArrangementModel()}, two_part_images(96, size=64, seed=3),
                          {**QUIET, "grids": [2], "texture": False, "num_examples": 1, "num_images": 96,
                           "groups": {"pair": ["red_left", "green_left"]}}, classes=["red_left", "green_left"])
    t = glob.tables["accuracy_by_group"].set_index("condition")
    assert (t["within"] == t["top1"]).all() and t.at["scrambled_2x2", "within_rel_hi"] < 0.8


def kept_contrast() -> pd.DataFrame:
    """The local BagNet-9 and the arrangement model on the same two-part images: the share of clean top-1 each keeps
    at 2x2 tiles, paired (the BagNet keeps all it had, the arrangement model falls to chance)."""
    r = scrambling.run({"BagNet-9": colour_bagnet(9), "global": ArrangementModel()}, two_part_images(96, size=64, seed=3),
                       {**QUIET, "grids": [2], "texture": False, "num_examples": 1, "num_images": 96,
                        "contrasts": [["BagNet-9", "global"], ["global", "BagNet-9"]]})
    return r.tables["contrasts"].set_index(["model", "minus"])


def test_scrambling_contrast_finds_the_local_model_keeps_more():
    c = kept_contrast()
    ahead, behind = c.loc[("BagNet-9", "global")], c.loc[("global", "BagNet-9")]
    assert ahead["lo"] > 0.3 and behind["hi"] < -0.3 and ahead["difference"] == pytest.approx(-behind["difference"])
    assert list(c["condition"].unique()) == ["scrambled_2x2"]


def test_scrambling_check_fails_when_scrambling_moves_nothing(monkeypatch):
    monkeypatch.setattr(scrambling, "scramble_batch", lambda images, *a, **k: images.clone())
    assert not scrambling_finds_it(scrambling_control())
    assert kept_contrast().loc[("BagNet-9", "global"), "lo"] <= 0      # the contrast sees nothing either


# ------------------------------------------------------------------ 2. additivity
def additivity_control() -> dict:
    """Largest interaction beyond q - 1 px of the BagNet-9 (float64), and the arrangement model's normalised
    interaction (lower 95% bound) when the two occluders sit on its two parts."""
    bag = additivity.run({"BagNet-9": colour_bagnet(9)}, blob_images(6, size=48, blobs=4, seed=5),
                         {**QUIET, "patch_sizes": [6], "distance_bins": [0, 8, 16, 48], "pairs_per_bin": 6,
                          "num_images": 6, "dtype": "float64"})
    glob = additivity.run({"global": ArrangementModel()}, two_part_images(8, size=64, seed=5),
                          {**QUIET, "patch_sizes": [10], "distance_bins": [0, 8, 64], "pairs_per_bin": 8,
                           "num_images": 8, "dtype": "float64", "placement": "both"})
    t, parts = bag.tables["interaction"], glob.tables["interaction_parts"]
    return {"bagnet_far": float(t[t["bin_lo"] >= 8]["max_abs_interaction"].max()),
            "bagnet_near": float(t[t["bin_lo"] < 8]["max_abs_interaction"].max()),
            "global": float(parts["normalized_interaction_lo"].min()),
            "global_random": float(glob.tables["interaction"]["normalized_interaction"].max())}


def additivity_finds_it(c: dict) -> bool:
    return c["bagnet_far"] < 1e-9 and c["global"] > 0.5


def test_additivity_exact_zero_for_the_bagnet_large_for_the_global_model():
    c = additivity_control()
    assert additivity_finds_it(c)
    assert c["bagnet_near"] < 1e-9     # linear in the pixels: even overlapping-patch pairs add exactly
    assert c["global_random"] < 0.2    # random pairs rarely hit both parts: why placement=parts exists


def test_additivity_check_fails_when_the_joint_effect_is_not_measured(monkeypatch):
    real = additivity.pair_effects

    def summed(*args, **kwargs):        # a broken instrument: reports the sum of single effects as the joint
        e = real(*args, **kwargs)
        return {**e, "delta_ab": e["delta_a"] + e["delta_b"]}
    monkeypatch.setattr(additivity, "pair_effects", summed)
    assert not additivity_finds_it(additivity_control())


# ------------------------------------------------------------------ 3. error overlap
def wrong_on(labels: np.ndarray, wrong) -> pd.DataFrame:
    """Per-image predictions over 4 classes that are right on every image but ``wrong``."""
    p = labels.copy()
    p[wrong] = (p[wrong] + 1) % 4
    return pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "pred": p,
                         **{f"top5_{j}": (p + j) % 4 for j in range(4)}})


def overlap_control(shift: int = 0) -> pd.DataFrame:
    """Two models wrong on the same 30 of 200 images, a third wrong on 30 others; ``shift`` gives the
    second model's predictions other image ids."""
    n, rng = 200, np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    shared, other = rng.permutation(n)[:30], rng.permutation(n)[:30]
    b = wrong_on(labels, shared)
    b["index"] = (b["index"] + shift) % n
    r = error_overlap.run({"A": wrong_on(labels, shared), "B": b, "C": wrong_on(labels, other)}, ["a", "b", "c", "d"])
    return r.tables["pairs"].set_index(["model_a", "model_b"])


def overlap_finds_it(pairs: pd.DataFrame) -> bool:
    return bool(pairs.loc[("A", "B"), "kappa_lo"] > 0.8 and pairs.loc[("A", "C"), "kappa_hi"] < 0.5)


def test_error_overlap_tells_shared_from_independent_errors():
    assert overlap_finds_it(overlap_control())


def test_error_overlap_refuses_predictions_of_other_images():
    with pytest.raises(ValueError, match="same images"):
        overlap_control(shift=1)


def test_error_overlap_check_fails_when_one_models_errors_are_misattributed(monkeypatch):
    real = error_overlap.correctness

    def rolled(predictions):            # a broken instrument: B's per-image correctness shifted by one image
        labels, pred, top1, top5 = real(predictions)
        return labels, pred, {**top1, "B": np.roll(top1["B"], 1)}, {**top5, "B": np.roll(top5["B"], 1)}
    monkeypatch.setattr(error_overlap, "correctness", rolled)
    assert not overlap_finds_it(overlap_control())


def test_error_consistency_against_a_reference_pair_has_the_known_sign():
    """Against a reference pair of two models wrong on the same images (kappa 1): a pair with independent errors
    reads below it, a pair with the same shared errors reads as no different; with the reference's roles swapped
    (independent reference) the shared-error pair reads above it. A reversed difference, or one taken against the
    wrong pair, fails."""
    n, rng = 400, np.random.default_rng(1)
    labels = rng.integers(0, 4, n)
    shared, other = rng.permutation(n)[:80], rng.permutation(n)[:80]
    models = {"CNN-1": wrong_on(labels, shared), "CNN-2": wrong_on(labels, shared), "BagNet": wrong_on(labels, other),
              "Twin": wrong_on(labels, shared)}
    t = error_overlap.run(models, list("abcd"), {"reference": ["CNN-1", "CNN-2"]}).tables["versus_reference"]
    t = t.set_index(["model_a", "model_b"])
    assert t.loc[("CNN-1", "BagNet"), "hi"] < -0.5 and t.loc[("CNN-1", "BagNet"), "verdict"].startswith("contradicted")
    assert t.loc[("CNN-1", "Twin"), "verdict"].startswith("not shown") and t.loc[("CNN-1", "Twin"), "difference"] == 0
    swapped = error_overlap.run(models, list("abcd"), {"reference": ["CNN-1", "BagNet"]}).tables["versus_reference"]
    assert swapped.set_index(["model_a", "model_b"]).loc[("CNN-1", "CNN-2"), "lo"] > 0.5


# ------------------------------------------------------------------ 4. sensitivity
def sensitivity_control(q: int, region: int | None = None) -> pd.Series:
    """AUC relative to occlusion when the BagNet-q's own heatmap ranks the regions it is masked by, on
    images with an interior of candidate regions at every q."""
    size = {9: 48, 17: 64, 33: 112}[q]
    r = sensitivity.run({"B": colour_bagnet(q)}, blob_images(8, size=size, blobs=max(2, size // 32), seed=1),
                        {**QUIET, "targets": ["B"], "bagnet": "B", "methods": ["bagnet", "occlusion", "random"],
                         "region": region, "num_images": 8, "bagnet_control": False, "max_regions": 6,
                         "report_n": [1, 6]})
    return r.tables["logit_drop"].set_index("method")["auc_vs_occlusion"]


def sensitivity_finds_it(rel: pd.Series) -> bool:
    return bool(rel["bagnet"] >= 0.8 and rel["random"] < 0.3)


@pytest.mark.parametrize("q", [9, 17, 33])
def test_the_bagnet_heatmap_finds_the_bagnets_own_evidence_at_the_default_region(q):
    rel = sensitivity_control(q)
    assert sensitivity_finds_it(rel), rel.to_dict()
    assert sensitivity.region_for(q) == (16 if q == 33 else 8)


def test_sensitivity_check_fails_with_the_earlier_geometry(monkeypatch):
    """The earlier instrument: 8 px regions at q = 33 and border regions scored from padded patches."""
    monkeypatch.setattr(sensitivity, "padded_region_mask", lambda h, w, k, q: torch.zeros((h // k) * (w // k), dtype=torch.bool))
    assert not sensitivity_finds_it(sensitivity_control(33, region=8))


def test_sensitivity_check_fails_with_a_heatmap_that_has_no_spatial_information(monkeypatch):
    real = sensitivity.heatmap
    monkeypatch.setattr(sensitivity, "heatmap", lambda *a, **kw: torch.ones_like(real(*a, **kw)))
    assert not sensitivity_finds_it(sensitivity_control(9))


def test_sensitivity_check_fails_with_the_heatmap_of_another_class(monkeypatch):
    real = sensitivity.heatmap
    monkeypatch.setattr(sensitivity, "heatmap", lambda model, images, target, **kw: real(model, images, 1 - target, **kw))
    assert not sensitivity_finds_it(sensitivity_control(17))


def test_regions_scored_only_by_padded_patches_are_never_masked():
    maps = torch.zeros(1, 32, 32)
    maps[0, :8, :8] = 5.0                                  # the top-left region: padded-only at q = 17
    last = sensitivity.padded_region_mask(32, 32, 8, 17)
    assert last[0] and int(last.sum()) == 12 and sensitivity.rank_regions(maps, 8)[0, 0] == 0
    order = sensitivity.rank_regions(maps, 8, last=last)
    assert not last[order[0, :4]].any() and set(order[0, 4:].tolist()) == set(torch.nonzero(last).flatten().tolist())
