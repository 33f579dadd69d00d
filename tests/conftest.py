"""Shared test setup: every test starts from the same random state; real datasets beside the checkout."""
import os
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
DATA = {"scene15": Path(os.environ.get("SCENE15_ROOT", SHARED / "scene15")),
        "imagenette-mini": Path(os.environ.get("IMAGENETTE_ROOT", SHARED / "imagenette-mini"))}


def real_data(name: str, must_have: str) -> Path:
    """The real dataset ``name`` (its folder must hold ``must_have``). Missing: the test fails on CI
    (CI=true, where the data are provided) and is skipped on a user's clone."""
    root = DATA[name]
    if not (root / must_have).exists():
        msg = f"{name} not found at {root} (set {'SCENE15_ROOT' if name == 'scene15' else 'IMAGENETTE_ROOT'})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI must provide it")
        pytest.skip(msg)
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """BN running stats and affine parameters away from identity (and Linear biases away from 0), so a
    weight-mapping test cannot pass by accident of the default initialisation."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
        elif isinstance(m, torch.nn.Linear) and m.bias is not None:
            m.bias.data.normal_(0, 0.2)
    return model.eval()
