"""Shared test setup: every test starts from the same random state; real datasets beside the checkout;
tiny BagNets; the runner in-process and as a command; tiny runs and image folders."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bagnet.config import compose
from bagnet.models import create_model
from bagnet.models.bagnet import BagNet
from bagnet.run import run_task

# Under pytest-xdist (make test: -n auto) the workers share the cores: one worker per core, each with its share
# of torch's threads (two workers with two threads each on two cores spend the time waiting for each other).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)      # and the commands a test starts

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


def tiny_bagnet(q: int = 9, width: int = 4, num_classes: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0,
                kernel3=None) -> BagNet:
    """A narrow BagNet-q (or the ``kernel3`` layout) in eval mode, seeded, with its norms randomized
    (:func:`randomize_norms`: BN is not the identity, so exact comparisons cannot pass by accident).
    float64 by default: exact comparisons."""
    torch.manual_seed(seed)
    model = create_model("bagnet", patch_size=q, num_classes=num_classes, width=width, kernel3=kernel3)
    return randomize_norms(model).to(dtype)


# ---------------------------------------------------------------- the runner, tiny runs, image folders
REPO = Path(__file__).resolve().parents[1]
# one tiny training run: 1 epoch of 1 step at 64 px
TINY = ["data=synthetic", "data.image_size=64", "data.samples_per_class=6", "data.val_per_class=3",
        "data.test_per_class=3", "debug=fast", "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
        "trainer.batch_size=4", "device=cpu", "model=bagnet9", "model.width=4"]


def run(tmp_path: Path, *overrides: str, edit=None):
    """``python -m bagnet.run <overrides>`` in-process; ``edit(cfg)`` may change the composed config first;
    returns (config, Result)."""
    overrides = [*overrides, f"paths.root_dir={tmp_path}"]
    cfg = compose(overrides)
    if edit:
        edit(cfg)
    return cfg, run_task(cfg, overrides)


def config(tmp_path: Path, *overrides: str):
    return compose([*overrides, f"paths.root_dir={tmp_path}"])


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m bagnet.run <args>`` as a command (what the user sees: stderr, exit code)."""
    return subprocess.run([sys.executable, "-m", "bagnet.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


def image_folder(root: Path, classes=("a", "b"), n: int = 5, seed: int = 0, bad: dict | None = None) -> Path:
    """``root/train/<class>/*.png`` (distinct random images); ``bad``: {split: count} undecodable files
    added to class ``classes[0]`` (a ``val/`` split is then created with ``n`` good images per class)."""
    rng = np.random.default_rng(seed)
    splits = ["train"] + [s for s in (bad or {}) if s != "train"]
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for split, count in (bad or {}).items():
        for i in range(count):
            (root / split / classes[0] / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def folder_args(root: Path, *extra: str) -> list[str]:
    return ["data=imagefolder", f"data.root={root}", "data.image_size=32", "data.workers=0", "debug=fast",
            "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.batch_size=4", "device=cpu",
            "model=bagnet9", "model.width=4", *extra]
