"""torch.hub loading from a checkout (hubconf.py) with the sha256-checked weights path, and a BagNet exported
with TorchScript and torch.export whose logits and patch logits match eager."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from bagnet import create_model
from bagnet.errors import WeightsError

REPO = Path(__file__).resolve().parents[1]


def release_file(directory: Path, stem: str, state: dict) -> Path:
    tmp = directory / "unnamed"
    torch.save(state, tmp)
    return tmp.rename(directory / f"{stem}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar")


def test_hub_entry_points_load_from_a_checkout():
    import importlib.util
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")   # what torch.hub imports
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    names = [n for n in dir(hub) if not n.startswith("_") and callable(getattr(hub, n))]
    assert {"bagnet9", "bagnet17", "bagnet33", "resnet50", "densenet169", "vgg16"} <= set(names)
    model = torch.hub.load(str(REPO), "bagnet33", source="local", width=8, num_classes=5)
    assert model.patch_size == 33 and model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_hub_pretrained_weights_are_the_release_file_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    reference = create_model("bagnet9")
    release_file(tmp_path, "bagnet8", reference.state_dict())
    monkeypatch.setenv("BAGNET_WEIGHTS_DIR", str(tmp_path))
    model = torch.hub.load(str(REPO), "bagnet9", source="local", pretrained=True)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # a file whose content does not match the hash in its name is refused
    bad = next(tmp_path.glob("bagnet8-*.pth.tar"))
    bad.write_bytes(bad.read_bytes()[:-8] + b"tampered")
    with pytest.raises(WeightsError):
        torch.hub.load(str(REPO), "bagnet9", source="local", pretrained=True)


class PatchLogits(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.patch_logits(x)


@pytest.mark.parametrize("q", [9, 33])
def test_exported_bagnet_matches_eager(q):
    model = create_model(f"bagnet{q}", width=8, num_classes=4).eval()
    x = torch.randn(2, 3, 72, 80)
    with torch.no_grad():
        logits, patches = model(x), model.patch_logits(x)
        scripted = torch.jit.trace(model, x)
        scripted_patches = torch.jit.trace(PatchLogits(model), x)
        assert torch.allclose(scripted(x), logits, atol=1e-5)
        assert torch.allclose(scripted_patches(x), patches, atol=1e-5)
        exported = torch.export.export(PatchLogits(model), (x,)).module()
        assert torch.allclose(exported(x), patches, atol=1e-5)
        assert torch.allclose(patches.mean((2, 3)), logits, atol=1e-5)   # image logits = mean of patch logits
