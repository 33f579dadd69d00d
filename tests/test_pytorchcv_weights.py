"""pytorchcv's ImageNet weights in our models: same logits as pytorchcv's own networks.

For each architecture: pytorchcv's model with random weights and random BN statistics, saved as a
release-style file, loaded through the path a user's local file takes (``weights=`` -> sha1 check ->
``pytorchcv_to_ours`` -> strict load); both in eval mode must give the same logits at 224x224.
pytorchcv is needed only for those reference networks (skipped without it); the loading code does not
import it, and the tests of the mapping rules, hash check and offline message run without it.
"""
from __future__ import annotations

import hashlib
import zipfile
from urllib.error import URLError

import pytest
import torch

from bagnet.models import create_model
from bagnet.models import pytorchcv_weights as pw
from bagnet.models.cbam import SpatialAttention
from bagnet.models.weights import WeightsError

try:
    from pytorchcv.model_provider import get_model as ptcv_get_model
except ImportError:  # not installed, or not importable with this torch
    ptcv_get_model = None
needs_pytorchcv = pytest.mark.skipif(
    ptcv_get_model is None, reason="pytorchcv not installed (pip install pytorchcv==0.0.74): no reference networks")

RTOL = 1e-5


@pytest.fixture
def randomized_reference(randomize_norms):
    """``randomized_reference(arch)``: pytorchcv's network, random weights, BN running stats and affine
    parameters away from identity."""
    def randomized_reference(arch: str) -> torch.nn.Module:
        torch.manual_seed(0)
        return randomize_norms(ptcv_get_model(arch, pretrained=False))   # the CBAM MLPs' biases too
    return randomized_reference


def save_release_like(sd: dict, directory, arch: str, error: str = "0000"):
    """torch.save(state_dict) under pytorchcv's release naming '<arch>-<error>-<sha1[:8]>.pth'."""
    tmp = directory / "unnamed.pth"
    torch.save(sd, tmp)
    return tmp.rename(directory / f"{arch}-{error}-{hashlib.sha1(tmp.read_bytes()).hexdigest()[:8]}.pth")


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))


@needs_pytorchcv
@pytest.mark.parametrize("arch", pw.ARCHS)
def test_pytorchcv_release_file_gives_pytorchcvs_logits(arch, x, tmp_path, randomized_reference):
    ref = randomized_reference(arch)
    path = save_release_like(ref.state_dict(), tmp_path, arch)
    ours = create_model(f"{arch}_pytorchcv", pretrained=True, weights=str(path)).eval()
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == want.shape == (1, 1000)
    assert rel_diff(got, want) < RTOL

    # the same weights without the mapping's fixes give other logits: the comparison can fail
    with torch.no_grad():
        if arch == "resnet50":  # torchvision's stride placement
            plain = create_model("resnet50").eval()
            plain.load_state_dict(ours.state_dict())
            assert rel_diff(plain(x), want) > 1e-2
        if arch == "cbam_resnet50":  # spatial gate's [mean; max] order not swapped
            for m in ours.modules():
                if isinstance(m, SpatialAttention):
                    m.conv.weight.data = m.conv.weight.data.flip(1)
            assert rel_diff(ours(x), want) > 1e-2


@needs_pytorchcv
def test_head_of_other_size_is_fresh_and_the_rest_loaded(tmp_path, randomized_reference):
    ref = randomized_reference("densenet121")
    path = save_release_like(ref.state_dict(), tmp_path, "densenet121")
    model = create_model("densenet121_pytorchcv", num_classes=15, pretrained=True, weights=str(path))
    assert model.classifier.weight.shape == (15, 1024)
    mapped = pw.pytorchcv_to_ours(ref.state_dict(), "densenet121")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in mapped.items() if not k.startswith("classifier."))


@needs_pytorchcv
def test_zipped_release_file_loads(tmp_path, randomized_reference):
    sd = randomized_reference("resnet50").state_dict()
    path = save_release_like(sd, tmp_path, "resnet50")
    zipped = path.with_name(path.name + ".zip")
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(path, path.name)
    model = create_model("resnet50_pytorchcv", weights=str(zipped))
    assert torch.equal(model.fc.weight, sd["output.weight"])


def test_mapping_rules():
    """Renames, the MLP reshape, the spatial conv's channel swap and DenseNet's stage/transition numbering."""
    mlp, spatial = torch.randn(16, 256), torch.randn(1, 2, 7, 7)
    cbam = pw.pytorchcv_to_ours({
        "features.init_block.conv.conv.weight": torch.zeros(64, 3, 7, 7),
        "features.stage2.unit1.body.conv3.bn.running_var": torch.ones(512),
        "features.stage2.unit1.identity_conv.conv.weight": torch.zeros(512, 256, 1, 1),
        "features.stage1.unit3.cbam.ch_gate.mlp.fc1.weight": mlp,
        "features.stage1.unit3.cbam.sp_gate.conv.conv.weight": spatial,
        "output.bias": torch.zeros(1000)}, "cbam_resnet50")
    assert sorted(cbam) == sorted(["conv1.weight", "layer2.0.bn3.running_var", "layer2.0.downsample.0.weight",
                                   "layer1.2.cbam.channel.fc1.weight", "layer1.2.cbam.spatial.conv.weight", "fc.bias"])
    assert torch.equal(cbam["layer1.2.cbam.channel.fc1.weight"], mlp[:, :, None, None])
    assert torch.equal(cbam["layer1.2.cbam.spatial.conv.weight"][:, 0], spatial[:, 1])  # ours: [mean; max]
    dense = pw.pytorchcv_to_ours({"features.stage3.trans3.conv.bn.weight": torch.ones(512),
                                  "features.stage4.unit32.conv2.conv.weight": torch.zeros(32, 128, 3, 3),
                                  "features.post_activ.bn.bias": torch.zeros(1664)}, "densenet169")
    assert sorted(dense) == ["features.denseblock4.denselayer32.conv2.weight", "features.norm5.bias",
                             "features.transition2.norm.weight"]


def test_release_name_with_wrong_sha1_is_rejected(tmp_path):
    path = tmp_path / pw.PYTORCHCV_CFGS["resnet50"]["file"]  # claims the real release's sha1
    torch.save({"output.bias": torch.zeros(1000)}, path)
    with pytest.raises(WeightsError, match="sha1"):
        create_model("resnet50_pytorchcv", weights=str(path))


def test_other_architecture_is_rejected():
    sd = {"features.stage1.unit1.cbam.ch_gate.mlp.fc1.weight": torch.zeros(16, 256)}  # a CBAM-ResNet key
    with pytest.raises(WeightsError, match="unknown keys"):
        pw.pytorchcv_to_ours(sd, "resnet50")
    with pytest.raises(WeightsError, match="unknown keys"):
        pw.pytorchcv_to_ours(sd, "densenet121")


def test_offline_download_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as err:
        create_model("cbam_resnet50_pytorchcv", pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "model.weights=" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "cbam_resnet50-0605-a1172fe6.pth" in message
