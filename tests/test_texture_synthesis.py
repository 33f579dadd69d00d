"""Gatys texture synthesis on a random-weight VGG-19 and 32 px images: the optimiser works, the result
matches the source's Gram statistics without copying its layout, and it is reproducible per image."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchvision.models.vgg import cfgs, make_layers

from experiments.texture_synthesis import (GATYS_LAYERS, GramExtractor, TextureConfig, gram, image_bounds,
                                           synthesize, vgg_layer_names)

LAYERS = ("conv1_1", "pool1", "pool2")  # the first three of Gatys' five: same code path, 5x cheaper
STEPS = 30
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # on a busy 2-core machine two threads per process oversubscribe the cores and run ~5x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def features() -> nn.Sequential:
    torch.manual_seed(0)
    return make_layers(cfgs["E"])  # the layer stack of torchvision's vgg19().features, random weights


@pytest.fixture(scope="module")
def extractor(features) -> GramExtractor:
    return GramExtractor(features, LAYERS)


def sources(n: int = 32) -> torch.Tensor:
    """Two images whose halves differ (a global arrangement to lose), in ImageNet-normalised space."""
    y, x = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    top = torch.stack([0.5 + 0.4 * torch.sin(x), 0.5 + 0.3 * torch.cos(y / 2), (x + y) / (2 * n)])
    checker = (torch.sin(x / 1.5) * torch.sin(y / 1.5) > 0).float()
    bottom = torch.stack([0.1 + 0.8 * checker, 0.6 - 0.5 * checker, 0.3 + 0.2 * checker])
    a = torch.where(y < n // 2, top, bottom)
    stripes = 0.5 + 0.45 * torch.sign(torch.sin((x + y) / 2))
    b = torch.stack([stripes, 0.5 + 0.4 * torch.sin(x / 3) * torch.cos(y / 3), torch.where(x < n // 2, 0.2, 0.8)])
    b = b * (y >= n // 4) + 0.5 * (y < n // 4)  # a flat grey band on top
    images = torch.stack([a, b]).clamp(0, 1)
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def result(extractor):
    src = sources()
    tex, hist = synthesize(src, extractor, STEPS, seed=3, mean=MEAN, std=STD)
    start, _ = synthesize(src, extractor, 0, seed=3, mean=MEAN, std=STD)
    return src, tex, hist, start


def gram_distance(extractor, x, src) -> torch.Tensor:
    """Per image: mean over layers of ||G(x) - G(src)||^2 / ||G(src)||^2."""
    g, t = extractor(x), extractor(src)
    return sum(((g[k] - t[k]) ** 2).sum((1, 2)) / (t[k] ** 2).sum((1, 2)) for k in t) / len(t)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: Pearson correlation of all pixel values of a and b."""
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


# ------------------------------------------------------------------ extractor
def test_layer_names_follow_caffe_vgg19(features):
    names = vgg_layer_names(features)
    # conv names are the rectified outputs (Caffe's in-place ReLU); pools end the blocks
    assert [names[k] for k in GATYS_LAYERS] == [1, 4, 9, 18, 27]
    assert names["conv5_4"] == 35 and names["relu3_2"] == 13
    assert isinstance(features[names["pool4"]], nn.MaxPool2d)


def test_extractor_is_a_frozen_avg_pool_copy(features):
    ext = GramExtractor(features, LAYERS).train()
    assert len(ext.features) == 10  # truncated after pool2
    assert not any(isinstance(m, nn.MaxPool2d) for m in ext.features)
    assert sum(isinstance(m, nn.AvgPool2d) for m in ext.features) == 2
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    # the caller's features are untouched
    assert isinstance(features[4], nn.MaxPool2d) and all(p.requires_grad for p in features.parameters())
    assert sum(isinstance(m, nn.MaxPool2d) for m in GramExtractor(features, LAYERS, avg_pool=False).features) == 2
    with pytest.raises(ValueError, match="unknown layer"):
        GramExtractor(features, ("conv1_1", "fc6"))


def test_gram_is_normalised_per_image(extractor):
    f = torch.randn(2, 4, 3, 5)
    g = gram(f)
    assert torch.allclose(g[1], f[1].reshape(4, 15) @ f[1].reshape(4, 15).T / 15, atol=1e-6)
    x = sources()
    batched, single = extractor(x), extractor(x[1:])
    assert list(batched) == list(LAYERS)
    assert [tuple(v.shape) for v in batched.values()] == [(2, 64, 64), (2, 64, 64), (2, 128, 128)]
    for k in LAYERS:
        assert torch.allclose(batched[k][1], single[k][0], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ synthesis
def test_loss_falls_substantially(result):
    _, _, hist, _ = result
    assert hist.shape == (2, STEPS + 1)
    assert (hist[:, -1] < 0.05 * hist[:, 0]).all(), hist[:, [0, -1]]
    # a line search that only accepts decreases: the history never goes up
    assert (hist.diff(dim=1) <= 1e-12).all()


def test_texture_matches_source_gram_statistics(result, extractor):
    src, tex, _, start = result
    before, after = gram_distance(extractor, start, src), gram_distance(extractor, tex, src)
    assert (after < 0.1 * before).all(), (before, after)
    assert (after < 0.02).all(), after


def test_texture_does_not_copy_the_layout(result):
    src, tex, _, start = result
    # a copy (or a start from the source) would correlate ~1 pixel by pixel
    assert (correlation(tex, src).abs() < 0.3).all(), correlation(tex, src)
    assert ((tex - src) ** 2).mean((1, 2, 3)).sqrt().min() > 0.5  # RMS difference, normalised units
    assert not torch.allclose(tex, start, atol=0.1)  # and it moved away from the start


def test_pixels_stay_in_the_valid_image_range(result):
    src, tex, _, start = result
    lo, hi = image_bounds(src, MEAN, STD)
    for x in (tex, start):
        assert ((x >= lo) & (x <= hi)).all()
    lo, hi = image_bounds(src)  # no mean/std: the source's own [min, max] (Gatys' L-BFGS-B bounds)
    assert torch.equal(lo[:, 0, 0, 0], src.flatten(1).min(1).values)
    assert torch.equal(hi[:, 2, 0, 0], src.flatten(1).max(1).values)


def test_same_seed_same_texture(result, extractor):
    src, tex, hist, _ = result
    again, hist_again = synthesize(src, extractor, STEPS, seed=3, mean=MEAN, std=STD)
    assert torch.equal(again, tex) and torch.equal(hist_again, hist)
    other, _ = synthesize(src[:1], extractor, 2, seed=4, mean=MEAN, std=STD)
    first, _ = synthesize(src[:1], extractor, 2, seed=3, mean=MEAN, std=STD)
    assert not torch.allclose(other, first, atol=1e-2)


def test_batch_equals_images_alone(result, extractor):
    src, tex, hist, _ = result
    # image i of a batch uses seed + i; L-BFGS runs per image, so nothing couples the images
    for i in range(2):
        alone, hist_alone = synthesize(src[i: i + 1], extractor, STEPS, seed=3 + i, mean=MEAN, std=STD)
        assert torch.equal(alone[0], tex[i]) and torch.equal(hist_alone[0], hist[i])


def test_default_protocol_runs_all_gatys_layers(features):
    cfg = TextureConfig(steps=4)
    assert cfg.layers == GATYS_LAYERS and cfg.avg_pool and cfg.history_size == 20
    assert TextureConfig().steps == 2000 and TextureConfig().max_size == 256
    ext = cfg.extractor(features)
    assert len(ext.features) == 28 and list(ext(sources()[:1])) == list(GATYS_LAYERS)
    tex, hist = cfg.synthesize(sources()[:1], ext, MEAN, STD)
    assert tex.shape == (1, 3, 32, 32) and hist[0, -1] < 0.5 * hist[0, 0]


def test_input_checks(extractor):
    with pytest.raises(ValueError, match="max_size"):
        synthesize(torch.zeros(1, 3, 40, 40), extractor, 1, max_size=32)
    with pytest.raises(ValueError, match="B, C, H, W"):
        synthesize(torch.zeros(3, 32, 32), extractor, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_the_extractors_device(features):
    ext = GramExtractor(features, LAYERS).cuda()
    src = sources().cuda()
    tex, hist = synthesize(src, ext, STEPS, seed=3, mean=MEAN, std=STD)
    assert tex.device == src.device and (hist[:, -1] < 0.05 * hist[:, 0]).all()
    cpu_start, _ = synthesize(src.cpu(), GramExtractor(features, LAYERS), 0, seed=3, mean=MEAN, std=STD)
    gpu_start, _ = synthesize(src, ext, 0, seed=3, mean=MEAN, std=STD)
    assert torch.allclose(gpu_start.cpu(), cpu_start, atol=1e-5)  # same seeded start on every device
