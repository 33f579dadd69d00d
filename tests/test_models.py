"""Model zoo: shapes, BagNet locality and receptive fields, release compatibility, weight loading."""
from __future__ import annotations

import copy
import hashlib
import importlib
from urllib.error import URLError

import pytest
import torch
import torchvision.models as tvm

from bagnet.models import create_model, is_bagnet, list_models
from bagnet.models.cbam import ChannelAttention, SpatialAttention
from bagnet.models.torchvision_models import densenet_filter
from bagnet.models.weights import WeightsError
from receptive_field import empirical_receptive_field, patch_window

bagnet_module = importlib.import_module("bagnet.models.bagnet")
cbam_module = importlib.import_module("bagnet.models.cbam")

PATCH_SIZES = (9, 17, 33)


# ---------------------------------------------------------------- every registered model
# Built small: the narrowest width where a model has one; the smallest input it accepts: 32 px (five
# stride-2 stages leave 1x1), AlexNet's stride-4 stem and three max-pools 63 px, a BagNet q + 16 px (3x3
# patches). A model that needs more is added to INPUT_PX.
SMALL = {name: {"width": 4} for name in ("bagnet", "bagnet9", "bagnet17", "bagnet33", "small_cnn")}
INPUT_PX = {"alexnet": 63, "small_cnn": 16}


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_every_parameter(name):
    """timm-style: forward shape, backward, a finite gradient for every trainable parameter (an unused
    layer has none), and a BagNet's logits are the mean of its patch logits."""
    model = create_model(name, num_classes=3, pretrained=False, **SMALL.get(name, {})).train()
    side = model.patch_size + 16 if is_bagnet(model) else INPUT_PX.get(name, 32)
    x = torch.randn(2, 3, side, side)
    out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 2])).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"{name}: no gradient for {no_grad[:5]} ({len(no_grad)} of {len(params)})"
    not_finite = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"{name}: non-finite gradient for {not_finite[:5]}"
    if is_bagnet(model):
        model.eval()
        with torch.no_grad():
            patches = model.patch_logits(x)
            assert patches.shape[:2] == (2, 3) and patches.shape[-2:] == (3, 3)
            torch.testing.assert_close(patches.mean((2, 3)), model(x), rtol=1e-5, atol=1e-6)


def test_unknown_model_name_lists_available():
    with pytest.raises(ValueError, match="available: .*bagnet33"):
        create_model("bagnet34")


def test_unsupported_patch_size_lists_supported():
    with pytest.raises(ValueError, match=r"9, 17, 33"):
        create_model("bagnet", patch_size=13)


# ---------------------------------------------------------------- BagNet geometry

@pytest.mark.parametrize("q", PATCH_SIZES)
def test_bagnet_receptive_field_is_q(q, make_tiny_bagnet):
    model = make_tiny_bagnet(q, width=8)
    assert model.patch_size == q
    assert empirical_receptive_field(model, input_size=(80, 80)) == (q, q)
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, q, q, dtype=torch.float64)).shape[-2:] == (1, 1)


@pytest.mark.parametrize("q, side", [(9, 27), (33, 24)])
def test_bagnet_feature_map_at_224(q, side, make_tiny_bagnet):
    with torch.no_grad():
        fmap = make_tiny_bagnet(q, width=8).forward_features(torch.zeros(1, 3, 224, 224, dtype=torch.float64))
    assert fmap.shape[-2:] == (side, side)


@pytest.mark.parametrize("q", PATCH_SIZES)
def test_patch_logit_depends_only_on_its_window(q, make_tiny_bagnet):
    model = make_tiny_bagnet(q, width=8)
    i, j = 1, 2
    row0, col0 = patch_window(i, j, q)
    assert (row0, col0) == (8 * i, 8 * j)
    x = torch.rand(1, 3, 8 * j + q + 16, 8 * j + q + 16, dtype=torch.float64)
    with torch.no_grad():
        ref = model.patch_logits(x)[0, :, i, j]

        def unit_after_poking(r, c):
            y = x.clone()
            y[0, :, r, c] += 5.0
            return model.patch_logits(y)[0, :, i, j]

        last_r, last_c = row0 + q - 1, col0 + q - 1
        for r, c in [(row0 - 1, col0), (row0, col0 - 1), (last_r + 1, last_c), (last_r, last_c + 1)]:
            assert torch.equal(unit_after_poking(r, c), ref), f"pixel {(r, c)} is outside the window"
        for r, c in [(row0, col0), (last_r, last_c), (row0 + q // 2, col0 + q // 2)]:
            assert not torch.equal(unit_after_poking(r, c), ref), f"pixel {(r, c)} is inside the window"


@pytest.mark.parametrize("q", PATCH_SIZES)
@pytest.mark.parametrize("size", [(64, 64), (57, 63)])
def test_logits_are_mean_of_patch_logits(q, size, make_tiny_bagnet):
    model = make_tiny_bagnet(q, width=8)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.patch_logits(x).mean((2, 3)), model(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- release compatibility

def release_state_dict_shapes(q: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of bagnets.pytorchnet.bagnet{q-1}() from the authors' release, written out here
    independently of the model code."""
    kernel3 = {9: [1, 1, 0, 0], 17: [1, 1, 1, 0], 33: [1, 1, 1, 1]}[q]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix, c):
        shapes.update({f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                       f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})

    shapes["conv1.weight"] = (64, 3, 1, 1)
    shapes["conv2.weight"] = (64, 64, 3, 3)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3]), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            k = 3 if i < kernel3[stage - 1] else 1
            shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (planes, planes, k, k)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            for n, c in [(1, planes), (2, planes), (3, planes * 4)]:
                bn(f"{p}.bn{n}", c)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


@pytest.mark.parametrize("q", PATCH_SIZES)
def test_state_dict_matches_authors_release(q):
    with torch.device("meta"):  # shapes only; skips allocating and initialising 18M parameters
        model = create_model(f"bagnet{q}")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = release_state_dict_shapes(q)
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:5], sorted(set(expected) - set(got))[:5])
    assert got == expected
    assert model.bn1.momentum == 0.001


@pytest.mark.parametrize("q", PATCH_SIZES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_training_forward_equals_the_release_forward(q, channels_last):
    """The composed stem conv and the format-keeping crop change nothing: same train-mode logits, loss,
    gradient of every parameter and BN running statistics as the release's forward (float64)."""
    torch.manual_seed(q)
    fast = create_model(f"bagnet{q}", num_classes=5, width=8).double().train()
    ref = copy.deepcopy(fast)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fast, ref = fast.to(memory_format=fmt), ref.to(memory_format=fmt)
    x = torch.randn(3, 3, q + 24, q + 24, dtype=torch.float64).contiguous(memory_format=fmt)
    y = torch.tensor([0, 3, 4])
    logits_fast, logits_ref = fast(x), bagnet_module.release_forward(ref, x)
    torch.testing.assert_close(logits_fast, logits_ref, rtol=1e-10, atol=1e-12)
    torch.nn.functional.cross_entropy(logits_fast, y).backward()
    torch.nn.functional.cross_entropy(logits_ref, y).backward()
    for (name, p), r in zip(fast.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-9, atol=1e-12, msg=name)
    for (name, buf), r in zip(fast.named_buffers(), ref.buffers()):
        torch.testing.assert_close(buf, r, rtol=1e-9, atol=1e-12, msg=name)


def test_residual_crop_keeps_the_gradients_memory_format():
    """Autograd's slice backward returns an NCHW gradient; the crop's keeps channels_last (BN's backward
    is several times slower on mixed formats) and is the same tensor."""
    x = torch.randn(2, 8, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 8, 7, 8)
    cropped = bagnet_module.crop_bottom_right(x, g)
    assert torch.equal(cropped, x[..., :7, :8])
    (cropped * g).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    expected = torch.zeros(2, 8, 9, 9)
    expected[..., :7, :8] = g
    assert torch.equal(x.grad, expected)


# ---------------------------------------------------------------- pretrained loading

def save_with_hash_name(state_dict, directory, stem="bagnet8"):
    """Save and name the file '<stem>-<sha256 prefix>.pth.tar' like the released files."""
    tmp = directory / "unnamed.pth.tar"
    torch.save(state_dict, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(directory / f"{stem}-{digest}.pth.tar")


@pytest.fixture(scope="module")
def bagnet9_release_like(tmp_path_factory):
    """A full-width 1000-class BagNet-9 state dict saved under a correctly hashed release-style name."""
    sd = create_model("bagnet9").state_dict()
    return sd, save_with_hash_name(sd, tmp_path_factory.mktemp("weights"))


def assert_same_weights(model, sd, skip=()):
    loaded = model.state_dict()
    for k, v in sd.items():
        if not k.startswith(skip):
            assert torch.equal(loaded[k], v), k


def test_pretrained_from_local_file(bagnet9_release_like):
    sd, path = bagnet9_release_like
    assert_same_weights(create_model("bagnet9", pretrained=True, weights=str(path)), sd)


def test_pretrained_from_wrapped_dataparallel_file(bagnet9_release_like, tmp_path):
    sd, _ = bagnet9_release_like
    path = tmp_path / "wrapped.pth.tar"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    assert_same_weights(create_model("bagnet9", weights=str(path)), sd)


def test_file_named_with_wrong_hash_is_rejected(bagnet9_release_like, tmp_path):
    _, path = bagnet9_release_like
    wrong = tmp_path / "bagnet8-00000000.pth.tar"
    wrong.symlink_to(path)
    with pytest.raises(WeightsError, match="sha256"):
        create_model("bagnet9", pretrained=True, weights=str(wrong))


def test_pretrained_with_other_num_classes_keeps_all_but_head(bagnet9_release_like):
    sd, path = bagnet9_release_like
    model = create_model("bagnet9", num_classes=10, pretrained=True, weights=str(path))
    assert model.fc.weight.shape == (10, 2048)
    assert_same_weights(model, sd, skip=("fc.",))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """torch.hub cache in tmp_path; any download attempt fails as if offline."""
    hub_dir = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub_dir))

    def no_network(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    return hub_dir


def test_offline_download_error_says_where_to_put_the_file(offline_hub):
    with pytest.raises(WeightsError) as err:
        create_model("bagnet9", pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert str(offline_hub / "checkpoints" / "bagnet8-34f4ccd2.pth.tar") in message
    assert "model.weights=" in message


def test_pretrained_from_hub_cache_without_network(offline_hub, bagnet9_release_like, monkeypatch):
    sd, path = bagnet9_release_like
    (offline_hub / "checkpoints").mkdir(parents=True)
    (offline_hub / "checkpoints" / path.name).symlink_to(path)
    cfg = dict(bagnet_module.DEFAULT_CFGS[9], file=path.name, url="https://example.invalid/" + path.name)
    monkeypatch.setitem(bagnet_module.DEFAULT_CFGS, 9, cfg)
    assert_same_weights(create_model("bagnet9", pretrained=True), sd)


# ---------------------------------------------------------------- CBAM-ResNet-50

def cbam_blocks(model):
    return [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]


def test_cbam_backbone_keys_equal_torchvision_resnet50():
    with torch.device("meta"):
        cbam = create_model("cbam_resnet50")
        resnet = tvm.resnet50()
    backbone = {k: v.shape for k, v in cbam.state_dict().items() if ".cbam." not in k}
    assert backbone == {k: v.shape for k, v in resnet.state_dict().items()}
    blocks = cbam_blocks(cbam)
    assert len(blocks) == 16
    for block in blocks:
        assert isinstance(block.cbam.channel, ChannelAttention)
        assert isinstance(block.cbam.spatial, SpatialAttention)
        assert block.cbam.channel.fc1.out_channels == block.conv3.out_channels // 16


def test_cbam_gates_follow_the_paper():
    x = torch.randn(2, 32, 5, 6, dtype=torch.float64)
    channel = ChannelAttention(32).double()

    def mlp(v):  # v: [B, C]
        hidden = torch.relu(v @ channel.fc1.weight[:, :, 0, 0].T + channel.fc1.bias)
        return hidden @ channel.fc2.weight[:, :, 0, 0].T + channel.fc2.bias

    weight = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
    torch.testing.assert_close(channel(x), x * weight[:, :, None, None])

    spatial = SpatialAttention().double().eval()
    pooled = torch.stack([x.mean(1), x.amax(1)], 1)
    gate = torch.sigmoid(spatial.bn(torch.nn.functional.conv2d(pooled, spatial.conv.weight, padding=3)))
    torch.testing.assert_close(spatial(x), x * gate)


def test_cbam_pretrained_loads_backbone_only(monkeypatch):
    resnet_sd = tvm.resnet50().state_dict()
    monkeypatch.setattr(cbam_module, "fetch_state_dict", lambda *a, **k: dict(resnet_sd))
    model = create_model("cbam_resnet50", num_classes=7, pretrained=True)
    assert model.fc.out_features == 7
    assert_same_weights(model, resnet_sd, skip=("fc.",))

    incomplete = {k: v for k, v in resnet_sd.items() if k != "layer2.0.conv2.weight"}
    monkeypatch.setattr(cbam_module, "fetch_state_dict", lambda *a, **k: dict(incomplete))
    with pytest.raises(WeightsError, match="layer2.0.conv2.weight"):
        create_model("cbam_resnet50", pretrained=True)


# ---------------------------------------------------------------- torchvision helpers

def test_densenet_filter_renames_legacy_norm_keys():
    renamed = densenet_filter({"features.denseblock1.denselayer1.norm.1.weight": 1,
                               "features.denseblock2.denselayer12.conv.2.weight": 2,
                               "features.norm5.weight": 3})
    assert renamed == {"features.denseblock1.denselayer1.norm1.weight": 1,
                       "features.denseblock2.denselayer12.conv2.weight": 2,
                       "features.norm5.weight": 3}
