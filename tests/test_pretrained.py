"""Released models as published: the one loader (``bagnet.models.releases.pretrained_model``) finds the release file in
``weights_dir`` and refuses data the release was not trained on, before any weight is read."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch

from bagnet import create_model
from bagnet.constants import IMAGENET_MEAN, IMAGENET_STD
from bagnet.errors import ConfigError
from bagnet.models.bagnet import DEFAULT_CFGS
from bagnet.models.releases import pretrained_model

IMAGENET = SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000)
SPEC = {"name": "bagnet", "patch_size": 9, "pretrained": True}


def released_copy(folder, seed: int = 0) -> dict:
    """A BagNet-9 state dict saved as a local copy of the release file, named under its own hash (torch.hub
    naming: the release name claims the release's hash, which a re-saved file cannot have)."""
    torch.manual_seed(seed)
    sd = create_model("bagnet9", width=64).state_dict()
    tmp = folder / "tmp.pth.tar"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    tmp.rename(folder / f"bagnet8-{digest}.pth.tar")
    assert not DEFAULT_CFGS[9]["file"].endswith(f"-{digest}.pth.tar")
    return sd


def test_finds_the_release_file_in_weights_dir(tmp_path):
    sd = released_copy(tmp_path)
    model = pretrained_model(SPEC, IMAGENET, "models.BagNet-9", str(tmp_path))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize("data, says", [
    (SimpleNamespace(mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=10), "predicts 1000 classes, the data has 10"),
    (SimpleNamespace(mean=(0.5, 0.5, 0.5), std=IMAGENET_STD, num_classes=1000), "its weights expect mean"),
])
def test_refuses_data_the_release_was_not_trained_on(tmp_path, data, says, monkeypatch):
    released_copy(tmp_path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("weights read before the data was checked"))
    with pytest.raises(ConfigError, match=says):
        pretrained_model(SPEC, data, "models.BagNet-9", str(tmp_path))


def test_a_model_without_a_release_is_refused():
    with pytest.raises(ConfigError, match="has no pretrained release"):
        pretrained_model({"name": "small_cnn", "pretrained": True}, IMAGENET, "models.CNN")
