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
