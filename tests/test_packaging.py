"""A non-editable install runs: the wheel carries every package, the configs and the data files, and its
bagnet-run trains and runs an experiment from a folder outside the checkout (slow: builds the wheel)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory, repo_root) -> Path:
    """The wheel built from this checkout, unpacked into a folder of its own (its dependencies are this
    environment's); the checkout is not on the path of what runs from there."""
    # built from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    source = tmp_path_factory.mktemp("source") / "bagnet-repro"
    shutil.copytree(repo_root, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "results", "build",
                                                                      "dist", "*.egg-info", "__pycache__",
                                                                      ".pytest_cache"))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("bagnet_repro-*.whl"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("bagnet", "experiments", "reports"):    # pyproject.toml lists packages by hand: all of them?
        for init in (repo_root / package).rglob("*.py"):
            assert str(init.relative_to(repo_root)) in names, f"{init.relative_to(repo_root)} is not in the wheel"
    configs = {str(p.relative_to(repo_root / "configs")) for p in (repo_root / "configs").rglob("*.yaml")}
    assert {f"bagnet/configs/{c}" for c in configs} <= names
    assert {"bagnet/data/imagenet_wnids.txt", "experiments/published.yaml"} <= names
    return site


def bagnet_run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BAGNET_RUNS_DIR", "PROJECT_ROOT")}
    code = "import sys; from bagnet.run import main; sys.argv = ['bagnet-run', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=900,
                          env={**env, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"})


def test_the_installed_wheel_trains_and_runs_an_experiment(installed, tmp_path):
    small = ["data=synthetic", "data.image_size=64", "data.samples_per_class=4", "data.val_per_class=2",
             "data.test_per_class=2", "model=bagnet9", "model.width=4", "device=cpu"]
    train = bagnet_run(installed, tmp_path, "task=train", "debug=fast", *small)
    assert train.returncode == 0, train.stderr[-2000:]
    run_dir = next(tmp_path.glob("runs/train/synthetic/bagnet9_w4/debug-seed0"))
    heat = bagnet_run(installed, tmp_path, "task=heatmaps", "debug=fast", *small, f"checkpoint={run_dir}",
                      "experiments.heatmaps.num_images=2")
    assert heat.returncode == 0, heat.stderr[-2000:]
    assert (tmp_path / "runs" / "debug" / "results" / "heatmaps" / "heatmaps.png").is_file()
    # the code ran from the wheel, not from the checkout, and says so in its provenance
    probe = subprocess.run([sys.executable, "-c", "import bagnet, bagnet.config as c; print(bagnet.__file__); "
                            "print(c.CONFIG_DIR)"], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(installed)})
    module, config_dir = probe.stdout.split()
    assert module.startswith(str(installed)) and config_dir == str(installed / "bagnet" / "configs")
    summary = (run_dir / "provenance.json").read_text()
    assert "installed bagnet-repro" in summary
