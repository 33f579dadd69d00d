"""Shared test setup: every test starts from the same random state; the fixtures tests receive (never
import from here): the checkout and the real datasets beside it, tiny BagNets, the runner in-process and as
a command, tiny runs, image folders, crafted files."""
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
REPO = Path(__file__).resolve().parents[1]
# one tiny training run: 1 epoch of 1 step at 64 px
TINY = ("data=synthetic", "data.image_size=64", "data.samples_per_class=6", "data.val_per_class=3",
        "data.test_per_class=3", "debug=fast", "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
        "trainer.batch_size=4", "device=cpu", "model=bagnet9", "model.width=4")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- the checkout, the real datasets
@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root (configs/, scripts/, notebooks/; the working directory of the commands tests start)."""
    return REPO


@pytest.fixture(scope="session")
def real_data():
    """``real_data(name, must_have)``: the real dataset ``name`` (its folder must hold ``must_have``). Missing:
    the test fails on CI (CI=true, where the data are provided) and is skipped on a user's clone."""
    def real_data(name: str, must_have: str) -> Path:
        root = DATA[name]
        if not (root / must_have).exists():
            msg = f"{name} not found at {root} (set {'SCENE15_ROOT' if name == 'scene15' else 'IMAGENETTE_ROOT'})"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(msg + "; CI must provide it")
            pytest.skip(msg)
        return root
    return real_data


# ---------------------------------------------------------------- tiny BagNets
def _randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
        elif isinstance(m, torch.nn.Linear) and m.bias is not None:
            m.bias.data.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="session")
def randomize_norms():
    """``randomize_norms(model)``: BN running stats and affine parameters away from identity (and Linear biases
    away from 0), so a weight-mapping test cannot pass by accident of the default initialisation; returns the
    model in eval mode."""
    return _randomize_norms


@pytest.fixture(scope="session")
def make_tiny_bagnet():
    """``make_tiny_bagnet(q=9, width=4, num_classes=5, dtype=torch.float64, seed=0, kernel3=None)``: a narrow
    BagNet-q (or the ``kernel3`` layout) in eval mode, seeded, with its norms randomized (BN is not the
    identity, so exact comparisons cannot pass by accident). float64 by default: exact comparisons."""
    def make_tiny_bagnet(q: int = 9, width: int = 4, num_classes: int = 5, dtype: torch.dtype = torch.float64,
                         seed: int = 0, kernel3=None) -> BagNet:
        torch.manual_seed(seed)
        model = create_model("bagnet", patch_size=q, num_classes=num_classes, width=width, kernel3=kernel3)
        return _randomize_norms(model).to(dtype)
    return make_tiny_bagnet


# ---------------------------------------------------------------- the runner, tiny runs, image folders
@pytest.fixture
def tiny_overrides() -> list[str]:
    """The overrides of one tiny training run: 1 epoch of 1 step at 64 px on synthetic data, a width-4 BagNet-9
    (a fresh list per test)."""
    return list(TINY)


@pytest.fixture
def run_in_process(tmp_path: Path):
    """``run_in_process(*overrides, edit=None)``: ``python -m bagnet.run <overrides>`` in-process under the test's
    ``tmp_path`` (paths.root_dir); ``edit(cfg)`` may change the composed config first; returns (config, Result)."""
    def run_in_process(*overrides: str, edit=None):
        overrides = [*overrides, f"paths.root_dir={tmp_path}"]
        cfg = compose(overrides)
        if edit:
            edit(cfg)
        return cfg, run_task(cfg, overrides)
    return run_in_process


@pytest.fixture
def compose_config(tmp_path: Path):
    """``compose_config(*overrides)``: the config ``run_in_process`` would run, composed under the test's
    ``tmp_path``."""
    def compose_config(*overrides: str):
        return compose([*overrides, f"paths.root_dir={tmp_path}"])
    return compose_config


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args, cwd=<checkout>, env=None)``: ``python -m bagnet.run <args>`` as a command (what the
    user sees: stderr, exit code); returns the CompletedProcess."""
    def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bagnet.run", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    return run_cli


@pytest.fixture(scope="session")
def one_error_line():
    """``one_error_line(stderr)``: asserts that ``stderr`` is one line starting with 'error: ' and returns it."""
    def one_error_line(stderr: str) -> str:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
        return lines[0]
    return one_error_line


@pytest.fixture(scope="session")
def make_image_folder():
    """``make_image_folder(root, classes=("a", "b"), n=5, seed=0, bad=None)``: ``root/train/<class>/*.png``
    (distinct random images); ``bad``: {split: count} undecodable files added to class ``classes[0]`` (a
    ``val/`` split is then created with ``n`` good images per class). Returns ``root``."""
    def make_image_folder(root: Path, classes=("a", "b"), n: int = 5, seed: int = 0, bad: dict | None = None) -> Path:
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
    return make_image_folder


@pytest.fixture(scope="session")
def folder_args():
    """``folder_args(root, *extra)``: the overrides of a tiny run (1 step at 32 px) on the image folder ``root``."""
    def folder_args(root: Path, *extra: str) -> list[str]:
        return ["data=imagefolder", f"data.root={root}", "data.image_size=32", "data.workers=0", "debug=fast",
                "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.batch_size=4", "device=cpu",
                "model=bagnet9", "model.width=4", *extra]
    return folder_args


# ---------------------------------------------------------------- crafted files
class _MakesAFile:
    """Unpickling this runs ``open(marker, "w")``: a stand-in for any code a crafted file could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def makes_a_file():
    """``makes_a_file(marker)``: an object whose unpickling runs ``open(marker, "w")`` (put it in a file given
    to torch.load; ``marker`` existing afterwards means the file's code ran)."""
    return _MakesAFile
