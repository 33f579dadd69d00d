"""torchvision's ImageNet weights in our baselines: same logits as torchvision's own networks.

For ResNet-50, DenseNet-121/169 and VGG-16: torchvision's model with random weights (BN statistics away from
identity), its state_dict saved under torchvision's release naming ('<arch>-<sha256 prefix>.pth'; the
DenseNets in the release files' legacy 'norm.1' key form) in tmp_path, loaded through ``model.weights=``
(hash check, key filter, strict load); both in eval mode must give the same logits. With num_classes=15 the
head is a fresh Linear(in, 15) and everything else is the file's.
"""
from __future__ import annotations

import hashlib
import re

import pytest
import torch
import torchvision.models as tvm

from bagnet.models import create_model
from bagnet.models.torchvision_models import DEFAULT_CFGS

ARCHS = {"resnet50": (tvm.resnet50, "fc"), "densenet121": (tvm.densenet121, "classifier"),
         "densenet169": (tvm.densenet169, "classifier"), "vgg16": (tvm.vgg16, "classifier.6")}
_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@pytest.fixture
def randomized(randomize_norms):
    """``randomized(builder)``: torchvision's network, seeded random weights, norms away from identity."""
    def randomized(builder) -> torch.nn.Module:
        torch.manual_seed(0)
        return randomize_norms(builder(weights=None))
    return randomized


def save_release_like(sd: dict, directory, arch: str):
    """Under torchvision's naming with the file's own sha256 prefix (its release names claim the hash)."""
    tmp = directory / "unnamed.pth"
    torch.save(sd, tmp)
    release = DEFAULT_CFGS[arch]["file"]                                   # e.g. resnet50-0676ba61.pth
    path = directory / f"{release.rsplit('-', 1)[0]}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    return tmp.rename(path)


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_release_file_gives_torchvisions_logits(arch, tmp_path, randomized):
    builder, head = ARCHS[arch]
    ref = randomized(builder)
    sd = ref.state_dict()
    if arch.startswith("densenet"):   # the release files' key form, which our loader's filter renames
        sd = {_LEGACY.sub(lambda m: m.group(1) + "." + m.group(2), k): v for k, v in sd.items()}
        assert any(".norm.1." in k for k in sd)
    path = save_release_like(sd, tmp_path, arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ours = create_model(arch, pretrained=True, weights=str(path)).eval()
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == want.shape == (2, 1000)
    assert ((got - want).norm() / want.norm()).item() < 1e-5

    # num_classes=15 (Table 1): a fresh Linear(in, 15) head, every other tensor from the file
    tuned = create_model(arch, pretrained=True, weights=str(path), num_classes=15)
    new_head = tuned.get_submodule(head)
    assert isinstance(new_head, torch.nn.Linear) and new_head.out_features == 15
    theirs = ref.state_dict()
    for k, v in tuned.state_dict().items():
        if not k.startswith(head + "."):
            assert torch.equal(v, theirs[k]), k
