"""Signature experiments on tiny models: exact properties, known answers and the documented outputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torchvision

from bagnet.models import create_model
from experiments import additivity, error_overlap, scrambling, sensitivity
from experiments.sensitivity import attribution_copy, attribution_maps, rank_regions

NO_BAR = {"progress": False}


def tiny_cnn() -> nn.Module:
    torch.manual_seed(1)
    return create_model("small_cnn", num_classes=5, width=8).eval()


def toy_dataset(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(3, size, size, generator=g), i % 5) for i in range(n)]


# ------------------------------------------------------------------ scrambling
def test_scramble_permutes_tiles_and_keeps_remainder():
    g, h, w = 4, 34, 30                                         # 2 remainder rows / cols
    x = torch.arange(3 * h * w, dtype=torch.float32).view(1, 3, h, w)   # every pixel unique
    y = scrambling.scramble(x, g, torch.Generator().manual_seed(3))
    th, tw = h // g, w // g
    assert torch.equal(y[..., g * th:, :], x[..., g * th:, :]) and torch.equal(y[..., g * tw:], x[..., g * tw:])
    tiles = lambda z: [z[0, :, r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(g) for c in range(g)]
    src = {t.flatten()[0].item(): t for t in tiles(x)}
    seen = [t.flatten()[0].item() for t in tiles(y)]
    assert sorted(seen) == sorted(src)                          # each original tile exactly once...
    assert all(torch.equal(t, src[t.flatten()[0].item()]) for t in tiles(y))   # ...and intact
    assert seen != sorted(seen)                                 # and actually moved (fixed seed)


def test_bagnet_patch_logits_inside_tiles_are_a_multiset_invariant(make_tiny_bagnet):
    m = make_tiny_bagnet(9)
    q, size, g = m.patch_size, 64, 2
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    y = scrambling.scramble(x, g, torch.Generator().manual_seed(1))
    assert not torch.equal(x, y)
    tile = size // g
    # unit i sees rows 8i..8i+q-1; keep units whose window lies inside one tile (tile starts are multiples of 8)
    inside = [i for i in range((size - q) // 8 + 1) if (8 * i) // tile == (8 * i + q - 1) // tile]
    assert len(inside) == 6

    def bag(z):
        p = m.patch_logits(z)[0][:, inside][:, :, inside]      # [K, n, n]
        return torch.sort(p.flatten(1), dim=1).values

    with torch.no_grad():
        assert torch.allclose(bag(x), bag(y), atol=1e-10, rtol=0)
        # the windows that straddle tile borders do change: the check above is not vacuous
        assert not torch.allclose(m.patch_logits(x), m.patch_logits(y), atol=1e-6)


class GapNet(nn.Module):
    """Per-pixel linear map, then the spatial mean: invariant to any rearrangement of the pixels."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


class CornerNet(nn.Module):
    """Reads only the top-left quarter's mean colour: class c <=> channel c is brightest there."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        h, w = x.shape[-2:]
        return self.scale * x[:, :, : h // 2, : w // 2].mean((2, 3))


def corner_dataset(n=12, size=32):
    out = []
    for i in range(n):
        x = torch.full((3, size, size), 0.05)
        x[0] += 0.01                                        # a background tile reads as class 0
        x[i % 3, : size // 2, : size // 2] += 1.0          # the class lives in the top-left tile only
        out.append((x, i % 3))
    return out


def test_scrambling_known_answers():
    ds = corner_dataset()
    res = scrambling.run({"gap": GapNet(), "corner": CornerNet()}, ds,
                         {"grids": [2], "texture": False, "num_images": None, **NO_BAR})
    t = res.tables["accuracy"].set_index(["model", "condition"])
    # a rearrangement-invariant model keeps exactly its clean accuracy (share kept 1, a zero-width interval)
    assert t.loc[("gap", "scrambled_2x2"), "top1"] == t.loc[("gap", "clean"), "top1"]
    assert t.loc[("gap", "scrambled_2x2"), ["top1_rel", "top1_rel_lo", "top1_rel_hi"]].tolist() == [1.0] * 3
    # the corner reader is perfect on clean images; every 2x2 scramble moves the corner tile (a derangement),
    # so it sees background and answers class 0: right for exactly the class-0 third of the images
    assert t.loc[("corner", "clean"), "top1"] == 1.0
    assert t.loc[("corner", "scrambled_2x2"), "top1"] == pytest.approx(1 / 3)
    assert t.loc[("corner", "scrambled_2x2"), "top1_rel_hi"] < 1.0
    lo, hi = t.loc[("gap", "clean"), ["top1_lo", "top1_hi"]]
    assert lo <= t.loc[("gap", "clean"), "top1"] <= hi and t["n"].eq(12).all()
    assert set(res.figures) == {"accuracy_vs_grid", "examples"}


def test_texture_known_answers_with_a_synthesis_of_known_effect():
    """The texture experiment's bookkeeping (which texture goes with which image and label, each condition's row),
    proven with a stand-in synthesis whose effect is known: a cyclic shift by half the image. A pixel-statistics
    model (GapNet) keeps exactly its clean accuracy on it and on the tiles; the corner reader loses the corner and
    is right on exactly the class-0 third, as on the tiles (a derangement always moves the corner tile). The
    synthesis itself: tests/test_texture_synthesis.py."""
    from experiments import texture
    ds = corner_dataset()
    asked = []

    def shifted(name, key, compute):   # the suite's cache, answering every chunk with its images shifted
        asked.append(key["indices"])
        images = torch.stack([ds[i][0] for i in key["indices"]])
        return {"textures": images.roll((16, 16), (-2, -1)), "loss": torch.ones(len(images), 2)}
    res = texture.run({"gap": GapNet(), "corner": CornerNet()}, ds,
                      {"num_images": None, "chunk": 5, "steps": 1, "scramble_grid": 2, "num_examples": 2}, cache=shifted)
    assert asked == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]       # every image once, in chunks
    t = res.tables["accuracy"].set_index(["model", "condition"])
    for condition in (texture.TEXTURE, "tiles 2x2"):
        assert t.loc[("gap", condition), "top1"] == t.loc[("gap", "clean"), "top1"], condition
        assert t.loc[("corner", condition), "top1"] == pytest.approx(1 / 3), condition
    assert t.loc[("corner", "clean"), "top1"] == 1.0 and t["n"].eq(12).all()
    assert t.loc[("corner", texture.TEXTURE), "top5_rel"] == 1.0        # 3 classes: top-5 is every class

def test_scrambling_per_image_rows_and_the_grid_of_a_tile_size():
    """Table 1's use: per-image rows that add up to the accuracy table, and ``tile_px`` adding the grid whose tiles
    have that many pixels (16 px on 32 px images: 2x2) beside the 4x4 grid, never twice."""
    ds = corner_dataset()
    res = scrambling.run({"corner": CornerNet()}, ds, {"grids": [4], "tile_px": 16, "texture": False,
                                                       "num_images": None, "per_image": True, **NO_BAR})
    t = res.tables["accuracy"].set_index("condition")
    assert list(t.index) == ["clean", "scrambled_4x4", "scrambled_2x2"]
    rows = res.tables["per_image"]
    assert len(rows) == 3 * len(ds) and sorted(set(rows["index"])) == list(range(len(ds)))
    # known answers image by image: the corner reader is right on every clean image, and on a 2x2-scrambled one
    # exactly when the image is of class 0 (the corner tile always moves; it then sees background, read as class 0)
    clean = rows[rows["condition"] == "clean"]
    assert clean["correct"].all() and (clean["pred"] == clean["label"]).all()
    moved = rows[rows["condition"] == "scrambled_2x2"]
    assert list(moved["correct"]) == [label == 0 for label in moved["label"]]
    assert (moved["pred"] == 0).all()
    for condition, acc in rows.groupby("condition")["correct"].mean().items():
        assert acc == pytest.approx(t.loc[condition, "top1"]), condition
    assert t.loc["scrambled_2x2", "top1"] == pytest.approx(1 / 3)     # the corner tile always moves (derangement)
    same = scrambling.run({"corner": CornerNet()}, ds, {"grids": [2], "tile_px": 16, "texture": False,
                                                        "num_images": None, **NO_BAR})
    assert list(same.tables["accuracy"]["condition"]) == ["clean", "scrambled_2x2"]
    assert scrambling.tile_grid(112, [4], 56) == 2 and scrambling.tile_grid(224, [4], 56) is None
    from bagnet.errors import ConfigError
    from experiments import registry
    with pytest.raises(ConfigError, match="remainder: 'grey' is neither keep nor black"):
        registry.check("scrambling", {"remainder": "grey"})


def test_scramble_moves_every_tile():
    g = 2
    x = torch.arange(4.0).view(1, 1, 2, 2).repeat(50, 1, 1, 1)       # tile t has value t
    y = scrambling.scramble(x, g, torch.Generator().manual_seed(0))
    assert (y != x).all()                                             # no tile in its old place, in 50 images
    assert sorted(y[0].flatten().tolist()) == [0.0, 1.0, 2.0, 3.0]    # a permutation of the tiles
    with pytest.raises(ValueError, match="g >= 2"):
        scrambling.scramble(x, 1)


def test_texturise_uses_image_patches():
    img = torch.randn(3, 40, 40)
    out = scrambling.texturise(img, 12, 4, torch.Generator().manual_seed(0))
    assert out.shape == img.shape
    # the first patch, minus the overlap later patches paste over (12 - 12 // 6 = 10 px), is a verbatim copy
    p = out[:, :10, :10]
    found = any(torch.equal(img[:, y:y + 10, x:x + 10], p) for y in range(29) for x in range(29))
    assert found


# ------------------------------------------------------------------ additivity
def test_additivity_exact_for_bagnet_and_not_for_cnn(make_tiny_bagnet):
    bins = [0, 4, 8, 16, 48]
    cfg = {"patch_sizes": [4], "distance_bins": bins, "pairs_per_bin": 6, "num_images": 3, **NO_BAR}
    ds = toy_dataset(3, 48)
    bag = additivity.run({"bag": make_tiny_bagnet(9)}, ds, cfg).tables["interaction"]
    q = 9
    assert (bag["exact_zero_from"] == q - 1).all()
    far = bag[bag["bin_lo"] >= q - 1]
    near = bag[bag["bin_hi"] <= 4]
    assert len(far) == 2 and (far["n_pairs"] > 0).all()
    assert (far["max_abs_interaction"] < 1e-9).all()
    assert (near["max_abs_interaction"] > 1e-6).all()        # touching patches do interact
    cnn = additivity.run({"cnn": tiny_cnn().double()}, ds, cfg).tables["interaction"]
    far_cnn = cnn[cnn["bin_lo"] >= q - 1]
    assert (far_cnn["normalized_interaction"] > 1e-3).all()
    # the CNN's interaction is an effect: its interval excludes 0; the BagNet's far bins are exactly 0
    assert (far_cnn["normalized_interaction_lo"] > 0).all()
    assert (far_cnn["normalized_interaction_lo"] <= far_cnn["normalized_interaction"]).all()
    assert (bag[bag["bin_lo"] >= q - 1]["normalized_interaction_hi"] < 1e-9).all()


def test_sampled_pairs_fall_in_their_bins():
    bins = [0, 2, 8, 30]
    a, b, k = additivity.sample_pairs(40, 40, 6, bins, 5, torch.Generator().manual_seed(0))
    d = additivity.chebyshev_gap(a, b, 6)
    lo, hi = torch.tensor(bins[:-1])[k], torch.tensor(bins[1:])[k]
    assert len(a) == 15 and ((d >= lo) & (d < hi)).all()
    assert ((a >= 0) & (a <= 34)).all() and ((b >= 0) & (b <= 34)).all()


# ------------------------------------------------------------------ error overlap
def _preds(labels, correct, k=10, seed=0, as_list=False):
    rng = np.random.default_rng(seed)
    pred = np.where(correct, labels, (labels + rng.integers(1, k, len(labels))) % k)
    df = pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "pred": pred})
    top5 = [[int((p + j) % k) for j in range(5)] for p in pred]
    if as_list:
        df["top5"] = [str(t) for t in top5]                     # as after a CSV round trip
    else:
        for j in range(5):
            df[f"top5_{j}"] = [t[j] for t in top5]
    return df


def test_error_overlap_known_answers():
    rng = np.random.default_rng(0)
    n, k = 20000, 10
    labels = rng.integers(0, k, n)
    a = _preds(labels, rng.random(n) < 0.7, seed=1)
    b = _preds(labels, rng.random(n) < 0.6, seed=2)
    res = error_overlap.run({"a": a, "a_copy": a.sample(frac=1, random_state=0), "b": b,
                             "b_list": _preds(labels, b["pred"].to_numpy() == labels, seed=2, as_list=True)},
                            [f"c{i}" for i in range(k)], {"seed": 0})
    p = res.tables["pairs"].set_index(["model_a", "model_b"])
    same = p.loc[("a", "a_copy")]
    err = 1 - (a["pred"] == a["label"]).mean()
    assert same["kappa"] == pytest.approx(1.0) and same["r_top1"] == pytest.approx(1.0)
    assert same["r_top5"] == pytest.approx(1.0)
    assert same["both_wrong_ratio"] == pytest.approx(1 / err)
    indep = p.loc[("a", "b")]
    assert abs(indep["kappa"]) < 0.03 and indep["both_wrong_ratio"] == pytest.approx(1.0, abs=0.05)
    assert p.loc[("b", "b_list")]["kappa"] == pytest.approx(1.0)   # list-valued top5 column parsed
    pc = res.tables["per_class"]
    assert list(pc.columns) == ["class", "class_id", "class_name", "model", "n", "top1", "top5"] and len(pc) == 4 * k
    assert set(res.figures) == {"class_accuracy_scatter", "kappa_matrix"}


def test_error_overlap_rejects_different_images():
    labels = np.arange(20) % 5
    a = _preds(labels, np.ones(20, bool))
    b = a.copy(); b["index"] = b["index"] + 1
    with pytest.raises(ValueError, match="same images"):
        error_overlap.run({"a": a, "b": b}, None, {})
    c = a.copy(); c.loc[3, "label"] = 4 if c.loc[3, "label"] != 4 else 0
    with pytest.raises(ValueError, match="labels"):
        error_overlap.run({"a": a, "c": c}, None, {})


# ------------------------------------------------------------------ sensitivity
REGION = (2, 1)        # planted region: rows 16..23, cols 8..15 of a 32 x 32 image (k = 8), index 2 * 4 + 1


class Planted(nn.Module):
    """Logits depend only on the pixels of one 8 x 8 region: relu(sum of the region) per class."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 8, stride=8, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.weight[1].mul_(-0.5)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        # one ReLU module used twice, like ResNets. (Two ReLUs fed from one shared tensor would make
        # captum's DeepLift incomplete, see experiments/sensitivity.py; so each branch convolves anew.)
        def region(z):
            return self.conv(z)[:, :, REGION[0], REGION[1]]
        return self.relu(region(x)) + self.relu(region(x) * 0.5)


def _planted_maps(model, images, target=None, stride=1):
    maps = torch.zeros(images.shape[0], images.shape[-2], images.shape[-1])
    maps[:, 8 * REGION[0]: 8 * REGION[0] + 8, 8 * REGION[1]: 8 * REGION[1] + 8] = 1.0
    return maps


def test_sensitivity_finds_planted_region(monkeypatch, make_tiny_bagnet):
    monkeypatch.setattr(sensitivity, "heatmap", _planted_maps)   # a BagNet that "knows" the region
    g = torch.Generator().manual_seed(0)
    ds = [(torch.rand(3, 32, 32, generator=g) + 0.5, 0) for _ in range(8)]
    images = torch.stack([x for x, _ in ds]); labels = torch.zeros(8, dtype=torch.long)
    cfg = sensitivity.typed_cfg(sensitivity.Config, {"seed": 0, "ig_steps": 8, "region": 8}, "test")
    target = attribution_copy(Planted())
    planted = REGION[0] * 4 + REGION[1]
    for method in ("occlusion", "bagnet", "saliency", "deeplift"):
        maps = attribution_maps(method, target, images, labels, cfg, bagnet=make_tiny_bagnet(dtype=torch.float32),
                                 indices=range(8))
        assert (rank_regions(maps, 8)[:, 0] == planted).all(), method
    rnd = rank_regions(attribution_maps("random", target, images, labels, cfg, indices=range(8)), 8)[:, 0]
    assert not (rnd == planted).all()

    res = sensitivity.run({"planted": Planted(), "bag": make_tiny_bagnet(dtype=torch.float32)}, ds,
                          {"num_images": 8, "max_regions": 4, "report_n": [1, 4], "ig_steps": 8,
                           "bagnet_control": False, **NO_BAR})
    t = res.tables["logit_drop"].set_index("method")
    assert list(res.tables["logit_drop"].columns) == ["target", "method", "n_images", "drop_1", "drop_4", "auc",
                                                      "auc_lo", "auc_hi", "control", "auc_vs_occlusion"]
    assert set(t.index) == set(sensitivity.METHODS) and (t["target"] == "planted").all()
    full = Planted()(images)[:, 0].double().mean().item()      # masking the region removes the whole logit
    for method in ("occlusion", "bagnet", "integrated_gradients"):
        assert t.loc[method, "drop_1"] == pytest.approx(full, rel=1e-5)
    assert t.loc["random", "auc"] < t.loc["occlusion", "auc"]
    assert list(res.tables["curves"].columns) == ["target", "method", "n", "mean_drop", "sem"]
    assert res.raw["deeplift_mean_abs_delta"]["planted"] < 1e-3
    assert set(res.figures) == {"logit_drop_vs_n"}


def test_sensitivity_control_padding_count_and_occluders(make_tiny_bagnet):
    """The BagNet is scored as its own target (control rows), every method is compared with the BagNet
    heatmap by a paired interval, the regions and their padded-only exclusions are recorded, and the
    occluder is what the config says (the masked pixels hold it)."""
    from experiments.sensitivity import masked_images, padded_region_mask
    ds = toy_dataset(4, 32)
    res = sensitivity.run({"cnn": tiny_cnn(), "bag": make_tiny_bagnet(dtype=torch.float32)}, ds,
                          {"num_images": 4, "max_regions": 3, "report_n": [1, 3], "ig_steps": 4,
                           "methods": ["bagnet", "saliency", "random"], "occluder": "dataset_mean", **NO_BAR})
    t = res.tables["logit_drop"]
    assert set(t["target"]) == {"cnn", "bag"} and t.groupby("target")["control"].first().to_dict() == {
        "bag": True, "cnn": False}
    assert (t["auc_lo"] <= t["auc"]).all() and (t["auc"] <= t["auc_hi"]).all()
    comp = res.tables["comparisons"]
    assert set(zip(comp["target"], comp["method"])) == {(a, b) for a in ("cnn", "bag") for b in ("saliency", "random")}
    assert res.raw["occluder"] == "dataset_mean"
    assert res.raw["regions"] == {"side_px": 8, "candidates": 16, "excluded_padded_only": 0, "masked_up_to": 3}
    # 32 px, 8 px regions, q = 9: the 4 px border band never covers a whole region -> no padded-only region;
    # with q = 17 (8 px band) the 12 border regions of the 4x4 grid are padded-only
    assert padded_region_mask(32, 32, 8, 9).sum() == 0 and padded_region_mask(32, 32, 8, 17).sum() == 12
    images = torch.randn(2, 3, 16, 16)
    fill = torch.full_like(images, 7.0)
    x = masked_images(images, torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]]), 8, 2, fill)
    assert (x[0, 0, :, 8:, 8:] == 7).all() and torch.equal(x[0, 0, :, :8, :8], images[0, :, :8, :8])


@pytest.mark.parametrize("stride", [1, 2])
def test_sensitivity_bagnet_maps_are_the_patchwise_heatmap(stride, make_tiny_bagnet):
    """The real `bagnet` branch (no monkeypatch): each pixel's value is the true-class logit of the q x q
    patch centred there, computed independently by cropping every patch and running the model on it
    (stride s fills each s x s cell with its top-left pixel's patch)."""
    from bagnet.heatmaps import heatmap_patchwise
    bag = make_tiny_bagnet(9)
    images = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    labels = torch.tensor([1, 3])
    cfg = sensitivity.typed_cfg(sensitivity.Config, {"heatmap_stride": stride}, "test")
    maps = attribution_maps("bagnet", attribution_copy(tiny_cnn()), images, labels, cfg, bagnet=bag)
    ref = heatmap_patchwise(bag, images, target=labels, stride=stride)          # [2, 24/s, 24/s]
    expected = ref.repeat_interleave(stride, 1).repeat_interleave(stride, 2)[:, :24, :24]
    assert maps.shape == (2, 24, 24)
    torch.testing.assert_close(maps.double(), expected.double(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "bagnet"])
def test_attribution_copy_same_outputs_and_deeplift_runs(name, make_tiny_bagnet):
    from captum.attr import DeepLift
    torch.manual_seed(0)
    if name == "bagnet":
        model, size = make_tiny_bagnet(dtype=torch.float32), 40
    else:
        model, size = getattr(torchvision.models, name)(num_classes=4).eval(), 32
    x = torch.randn(2, 3, size, size)
    copy_ = attribution_copy(model)
    relus = [m for m in copy_.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    if name == "densenet121":     # DenseNet.forward's F.relu became a module of its own
        assert len(relus) == sum(isinstance(m, nn.ReLU) for m in model.modules()) + 1
    else:                         # reused self.relu: captum refuses the original (why attribution_copy exists)
        with pytest.raises(RuntimeError, match="more than once"):
            DeepLift(model).attribute(x.clone(), baselines=0.0, target=torch.tensor([0, 1]))
    with torch.no_grad():
        assert torch.allclose(copy_(x), model(x), atol=1e-6)
    _, delta = DeepLift(copy_).attribute(x, baselines=0.0, target=torch.tensor([0, 1]), return_convergence_delta=True)
    assert delta.abs().max() < 1e-3 * max(1.0, model(x).abs().max().item())




def test_the_suite_cache_computes_once_per_key_and_outlives_the_process(tmp_path):
    """An experiment's kept work (texture's syntheses): computed once per key, again when the key changes, read
    back from disk by a later run (a new Store on the same run dir)."""
    from experiments.suite import Store, memory_cache
    calls = []

    def make(v):
        def compute():
            calls.append(v)
            return {"t": torch.full((2,), float(v))}
        return compute
    for cache in (Store(tmp_path).cache("texture"), memory_cache()):
        calls.clear()
        a, b = cache("chunk_0", {"k": 1}, make(1)), cache("chunk_0", {"k": 1}, make(2))
        assert calls == [1] and torch.equal(a["t"], b["t"])
        assert cache("chunk_0", {"k": 2}, make(3))["t"][0] == 3 and calls == [1, 3]
    calls.clear()
    assert Store(tmp_path).cache("texture")("chunk_0", {"k": 2}, make(4))["t"][0] == 3 and calls == []
