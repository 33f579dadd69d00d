"""Dense heatmaps == patch-wise reference; stride-8 relations; predictive patches; figures."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from bagnet.heatmaps import heatmap, heatmap_patchwise, pad_for_heatmap
from bagnet.patches import most_predictive_patches
from bagnet.viz import compare_bagnets_figure, heatmap_figure, patches_figure


@pytest.fixture(scope="module")
def models(make_tiny_bagnet):
    """The tiny BagNet-9, -17 and -33 the tests share, by patch size."""
    return {q: make_tiny_bagnet(q) for q in (9, 17, 33)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Thousands of tiny convs: with >1 OpenMP thread on a shared CPU this file ran 10x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def images(h, w, b=2, dtype=torch.float64, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("q", [9, 17, 33])
@pytest.mark.parametrize("size", [(40, 40), (57, 63)])
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_dense_equals_patchwise_float64(q, size, stride, models):
    b = 2
    m, x = models[q], images(*size, b=b)
    dense = heatmap(m, x, target=None, stride=stride)
    ref = heatmap_patchwise(m, x, target=None, stride=stride)
    hs, ws = -(-size[0] // stride), -(-size[1] // stride)
    assert dense.shape == ref.shape == (b, 5, hs, ws)
    assert (dense - ref).abs().max().item() <= 1e-9


@pytest.mark.parametrize("kernel3", [(0, 0, 0, 0), (2, 0, 1, 2)])
def test_other_kernel3_layouts(kernel3, make_tiny_bagnet):
    # (0,0,0,0): every stride sits on a 1x1 conv (pure subsampling); (2,0,1,2): repeated 3x3s.
    m, x = make_tiny_bagnet(kernel3=kernel3, num_classes=3), images(23, 30, b=1)
    for stride in (1, 2, 5, 8):
        assert (heatmap(m, x, 2, stride) - heatmap_patchwise(m, x, 2, stride)).abs().max() <= 1e-9


@pytest.mark.parametrize("channels_last", [True, False])
def test_both_memory_layouts_are_exact(channels_last, make_tiny_bagnet):
    m, x = make_tiny_bagnet(17, width=16), images(30, 27, b=1)
    got = heatmap(m, x, None, 1, channels_last=channels_last)
    assert (got - heatmap_patchwise(m, x, None, 1)).abs().max() <= 1e-9


def test_float32_relative(make_tiny_bagnet, models):
    m32 = make_tiny_bagnet(33, dtype=torch.float32)
    x = images(41, 38, dtype=torch.float32)
    ref = heatmap_patchwise(models[33], x.double(), target=None, stride=1)   # float64 truth
    for got in (heatmap(m32, x, None, 1), heatmap_patchwise(m32, x, None, 1)):
        assert got.dtype == torch.float32
        assert ((got.double() - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("q, width", [(9, 8), (17, 16)])
def test_float32_error_below_the_patchwise_routine(q, width, make_tiny_bagnet):
    # The dense map centres every conv's input (offsets folded into the biases). Without it its float32
    # error was 0.9-1.2x the patch-wise routine's on these nets; with it 0.2-0.5x. The patch-wise map
    # runs the plain network, so it is the uncentred computation's error.
    m64 = make_tiny_bagnet(q, width=width, num_classes=10, seed=3)
    m32 = make_tiny_bagnet(q, width=width, num_classes=10, seed=3, dtype=torch.float32)
    x = images(48, 48, b=1, dtype=torch.float32, seed=2)
    truth = heatmap(m64, x.double(), None, 1)
    rms = lambda got: ((got.double() - truth).pow(2).mean().sqrt() / truth.abs().max()).item()
    assert rms(heatmap(m32, x, None, 1)) <= 0.7 * rms(heatmap_patchwise(m32, x, None, 1))


def test_target_forms_consistent_and_chunking(models):
    m, x = models[17], images(35, 29, b=3)
    full = heatmap(m, x, None, stride=2)
    t = torch.tensor([4, 0, 2])
    per = heatmap(m, x, t, stride=2)
    assert per.shape == (3, 18, 15)
    assert torch.equal(per, full[torch.arange(3), t]) or (per - full[torch.arange(3), t]).abs().max() < 1e-12
    assert (heatmap(m, x, 1, stride=2) - full[:, 1]).abs().max() < 1e-12
    # Row bands must stitch to the same map (band starts are multiples of the stride).
    assert (heatmap(m, x, None, stride=2, chunk_rows=4) - full).abs().max() < 1e-12


@pytest.mark.parametrize("q", [9, 17, 33])
def test_stride8_relations(q, models):
    m, x = models[q], images(57, 63)
    p = (q - 1) // 2
    # 1. Stride 8 is the plain fully convolutional pass on the padded image.
    h8 = heatmap(m, x, None, stride=8)
    assert (h8 - m.patch_logits(F.pad(x, [p] * 4))).abs().max() <= 1e-9
    assert torch.equal(pad_for_heatmap(m, x), F.pad(x, [p] * 4))
    # 2. The unpadded image's patches are the stride-1 map at (p + 8i, p + 8j) ...
    h1 = heatmap(m, x, None, stride=1)
    pl = m.patch_logits(x)
    nh, nw = (57 - q) // 8 + 1, (63 - q) // 8 + 1
    assert pl.shape[-2:] == (nh, nw)
    assert (h1[..., p::8, p::8][..., :nh, :nw] - pl).abs().max() <= 1e-9
    # 3. ... so model(x) is the mean of exactly those entries (no padded patch involved).
    assert (h1[..., p::8, p::8][..., :nh, :nw].mean((2, 3)) - m(x)).abs().max() <= 1e-9
    # 4. When 8 | p (q = 17, 33) they sit on the stride-8 grid at offset p/8; for q = 9 on stride 4.
    if p % 8 == 0:
        o = p // 8
        assert (h8[..., o:o + nh, o:o + nw].mean((2, 3)) - m(x)).abs().max() <= 1e-9
    else:
        h4 = heatmap(m, x, None, stride=4)
        assert (h4[..., p // 4::2, p // 4::2][..., :nh, :nw].mean((2, 3)) - m(x)).abs().max() <= 1e-9


def test_train_mode_rejected_and_stride_range(make_tiny_bagnet, models):
    m = make_tiny_bagnet(9).train()
    with pytest.raises(ValueError, match="eval"):
        heatmap(m, images(16, 16), 0)
    with pytest.raises(ValueError):
        heatmap(models[9], images(16, 16), 0, stride=9)


# ------------------------------------------------------------------------------------------------
# Most predictive patches.
# ------------------------------------------------------------------------------------------------

def _planted_dataset(make_tiny_bagnet):
    """Low-amplitude noise images (labels 0/1) plus a strong pattern planted on the patch grid:
    once in a class-0 image (true class patch) and once in a class-1 image (a distractor)."""
    m = make_tiny_bagnet(9, num_classes=2, dtype=torch.float32, seed=3)
    g = torch.Generator().manual_seed(7)
    x = 0.05 * torch.randn(12, 3, 33, 33, generator=g)
    y = torch.tensor([0, 1] * 6)
    # Pick the pattern with the largest class-0 logit among random candidates, then scale it up
    # until it beats every background patch (ReLU nets grow ~linearly in input scale).
    cands = torch.randn(64, 3, 9, 9, generator=g)
    with torch.no_grad():
        pattern = cands[m(cands)[:, 0].argmax()]
        background = m.patch_logits(x)[:, 0].max()
        scale = 1.0
        while m(scale * pattern[None])[0, 0] <= background + 1.0:
            scale *= 2
            assert scale < 1e4
    pattern = scale * pattern
    x[4, :, 8:17, 16:25] = pattern            # class 0 image, grid position (1, 2)
    x[7, :, 24:33, 0:9] = pattern             # class 1 image, grid position (3, 0)
    return m, x, y, pattern


def test_most_predictive_patches_finds_planted_pattern(make_tiny_bagnet):
    m, x, y, pattern = _planted_dataset(make_tiny_bagnet)
    res = most_predictive_patches(m, TensorDataset(x, y), classes=[0, 1], k=3, batch_size=5)
    top, dis = res[0]["class"], res[0]["distractor"]
    assert top["image_index"][0] == 4 and top["location"][0].tolist() == [8, 16]
    assert dis["image_index"][0] == 7 and dis["location"][0].tolist() == [24, 0] and dis["label"][0] == 1
    assert torch.equal(top["patches"][0], pattern) and top["patches"].shape == (3, 3, 9, 9)
    assert (top["label"] == 0).all() and (dis["label"] != 0).all()
    assert (top["logits"][:-1] >= top["logits"][1:]).all()
    # Logits and crops are those of patch_logits at the reported positions.
    with torch.no_grad():
        pl = m.patch_logits(x)
    for d in (top, dis, res[1]["class"], res[1]["distractor"]):
        for j in range(len(d["logits"])):
            i, (r, c) = int(d["image_index"][j]), d["location"][j].tolist()
            assert torch.equal(d["patches"][j], x[i, :, r:r + 9, c:c + 9])
    assert torch.allclose(top["logits"], torch.stack([pl[i, 0, r // 8, c // 8] for i, (r, c) in
                                                      zip(top["image_index"].tolist(),
                                                          top["location"].tolist())]), atol=1e-5)
    # Streaming in different batch sizes gives the same answer; per_class_images limits the scan.
    again = most_predictive_patches(m, TensorDataset(x, y), classes=[0], k=3, batch_size=12)
    assert torch.equal(again[0]["class"]["image_index"], top["image_index"])
    few = most_predictive_patches(m, TensorDataset(x, y), classes=[0], k=3, per_class_images=2)
    assert set(few[0]["class"]["image_index"].tolist()) <= {0, 2}
    assert set(few[0]["distractor"]["image_index"].tolist()) <= {1, 3}



def test_predictive_patches_are_distinct_windows_at_most_two_per_image(make_tiny_bagnet):
    m, x, y, pattern = _planted_dataset(make_tiny_bagnet)
    x[4, :, 24:33, 24:33] = pattern                  # a second, separate copy in image 4
    for i in (0, 2):                                  # and in two more class-0 images
        x[i, :, 8:17, 8:17] = 0.9 * pattern
    res = most_predictive_patches(m, TensorDataset(x, y), classes=[0], k=4)[0]["class"]
    windows = list(zip(res["image_index"].tolist(), map(tuple, res["location"].tolist())))
    assert windows[0][0] == 4 and {(4, (8, 16)), (4, (24, 24))} <= set(windows)
    for n, (i, (r, c)) in enumerate(windows):        # no two overlapping windows of one image, <= 2 each
        assert sum(j == i for j, _ in windows) <= 2
        assert all(not (abs(r - r2) < 9 and abs(c - c2) < 9) for j, (r2, c2) in windows[:n] if j == i)
    plain = most_predictive_patches(m, TensorDataset(x, y), classes=[0], k=4, max_per_image=None)[0]["class"]
    assert (plain["logits"] >= res["logits"]).all()   # the plain top-k is the upper bound, position by position

# ------------------------------------------------------------------------------------------------
# Figures.
# ------------------------------------------------------------------------------------------------

def _png_size(fig, path):
    fig.savefig(path)
    with Image.open(path) as im:
        return im.size


def test_relative_evidence_removes_a_per_patch_constant(make_tiny_bagnet):
    """A feature that raises every class's logit of a patch by the same amount changes no prediction, yet the raw
    logit ranks its patches first for every class (the same patches head two classes' lists); relative
    evidence (logit minus the patch's mean logit) ranks as the model without that feature does, and its
    heatmap is exactly the patch-wise logits minus their class mean."""
    import copy
    m = make_tiny_bagnet(9, num_classes=4)
    x = images(40, 40, b=3)
    ref = heatmap_patchwise(m, x, target=None)
    rel = heatmap(m, x, target=None, evidence="relative")
    assert torch.allclose(rel, ref - ref.mean(1, keepdim=True), atol=1e-9)
    assert torch.allclose(heatmap(m, x, target=2, evidence="relative"), rel[:, 2], atol=1e-12)
    shifted = copy.deepcopy(m)
    feats = m.forward_features(x)
    j = int(feats.std((0, 2, 3)).argmax())             # the feature that varies most across patches
    shifted.fc.weight.data[:, j] += 50.0                 # + 50 f_j to every class's logit of every patch
    assert torch.equal(shifted(x).argmax(1), m(x).argmax(1))
    data = TensorDataset(x, torch.tensor([0, 1, 2]))

    def best(model, evidence):    # per class: (score, image, row, col) of its best patch in any image
        found = most_predictive_patches(model, data, classes=range(4), k=3, max_per_image=None, evidence=evidence)
        out = {}
        for c in range(4):
            d = [found[c][kind] for kind in ("class", "distractor")]
            scores = torch.cat([e["logits"] for e in d])
            where = torch.cat([torch.cat([e["image_index"][:, None], e["location"]], 1) for e in d])
            out[c] = (float(scores.max()), tuple(where[int(scores.argmax())].tolist()))
        return out
    raw, rel, plain = best(shifted, "logit"), best(shifted, "relative"), best(m, "relative")
    assert len({raw[c][1] for c in range(4)}) == 1          # raw: one patch of high f_j heads every class
    assert len({plain[c][1] for c in range(4)}) > 1
    assert {c: v[1] for c, v in rel.items()} == {c: v[1] for c, v in plain.items()}   # relative: blind to it
    assert all(abs(rel[c][0] - plain[c][0]) < 1e-9 for c in range(4))


def test_figures_have_expected_pixel_size(tmp_path, models, make_tiny_bagnet):
    x = images(40, 40, dtype=torch.float32)
    maps = {f"BagNet-{q}": heatmap(models[q], x, 0, stride=1) for q in (9, 17, 33)}
    fig = heatmap_figure(x, maps["BagNet-33"], titles=["a", "b"], panel_inches=2.0, dpi=50)
    assert _png_size(fig, tmp_path / "h.png") == (200, 200)
    fig = compare_bagnets_figure(x, maps, panel_inches=2.0, dpi=50)
    assert _png_size(fig, tmp_path / "c.png") == (400, 200)
    m, xs, ys, _ = _planted_dataset(make_tiny_bagnet)
    res = most_predictive_patches(m, TensorDataset(xs, ys), classes=[0], k=3)
    fig = patches_figure(res[0], "zero", class_names=["zero", "one"], panel_inches=1.0, dpi=100)
    assert _png_size(fig, tmp_path / "p.png") == (300, 260)
    texts = [t.get_text() for ax in fig.axes for t in [ax.xaxis.label]]
    assert f"{float(res[0]['class']['logits'][0]):.2f}" in texts


def test_patches_of_listed_classes_name_the_split_images(make_tiny_bagnet):
    """With ``classes`` the scan runs on a subset (the classes' images and a few seeded distractors); every row still
    names the image by its index in the split, not by its place in that subset."""
    import matplotlib.pyplot as plt
    from experiments.explain import patches_result
    m, x, y, pattern = _planted_dataset(make_tiny_bagnet)
    r = patches_result({"BagNet-9": m}, TensorDataset(x, y), ["a", "b"], (0.0,) * 3, (1.0,) * 3, k=2,
                       per_class_images=3, device="cpu", max_per_image=2, evidence="logit", class_ids=[0],
                       distractor_images=1, seed=0)
    t = r.tables["patches"]
    own, dis = t[t.kind == "class"], t[t.kind == "distractor"]
    assert own.iloc[0]["image_index"] == 4 and set(own["image_index"]) <= {0, 2, 4}   # the planted image, by its index
    assert dis["image_index"].nunique() == 1 and all(int(y[i]) == 1 for i in dis["image_index"])
    assert set(t["class"]) == {"a"} and (own["images_scanned"] == 3).all() and (dis["images_scanned"] == 1).all()
    plt.close("all")


def test_heatmaps_per_class_draw_each_class_from_its_own_images(make_tiny_bagnet):
    """``per_class``: that many seeded images of every class, a figure per class named by its index and id."""
    import matplotlib.pyplot as plt
    from experiments.explain import heatmaps_result
    m = make_tiny_bagnet(9, num_classes=3, dtype=torch.float32)
    x, y = torch.randn(9, 3, 33, 33), torch.tensor([0, 1, 2] * 3)
    r = heatmaps_result({"BagNet-9": m}, TensorDataset(x, y), ["a", "b", "c"], (0.0,) * 3, (1.0,) * 3, num_images=4,
                        seed=0, device="cpu", stride=1, evidence="relative", per_class=2)
    assert list(r.figures) == ["heatmaps_000_a", "heatmaps_001_b", "heatmaps_002_c"]
    t = r.tables["heatmaps"]
    assert list(t["label"]) == ["a", "a", "b", "b", "c", "c"] and all(int(y[i]) == "abc".index(c)
                                                                      for i, c in zip(t["index"], t["label"]))
    plt.close("all")


def test_patches_come_from_the_largest_q_bagnet_whatever_the_order_of_the_models(make_tiny_bagnet):
    """The Imagenette pipeline lists BagNet-33 first: its patches were BagNet-9's while the code took the last one."""
    import matplotlib.pyplot as plt
    from experiments.explain import patches_result
    x, y = torch.randn(4, 3, 40, 40), torch.tensor([0, 1, 0, 1])
    models = {"BagNet-17": make_tiny_bagnet(17, num_classes=2, dtype=torch.float32),
              "BagNet-9": make_tiny_bagnet(9, num_classes=2, dtype=torch.float32)}
    r = patches_result(models, TensorDataset(x, y), ["a", "b"], (0.0,) * 3, (1.0,) * 3, k=1, per_class_images=None,
                       device="cpu", max_per_image=1, evidence="relative")
    titles = [fig._suptitle.get_text() for fig in r.figures.values()]
    assert len(titles) == 2 and all(t.startswith("BagNet-17:") for t in titles)
    plt.close("all")
