"""Issue 24, as a new user meets the suite: messages that name the right variable and folder, a progress
bar that counts what will run, and a missing-weights error that fits on one line."""
from __future__ import annotations

import pytest

from bagnet.data import DataError, build_data
from conftest import TINY, config, image_folder, run_cli


@pytest.mark.parametrize("data, variable", [("imagenette", "IMAGENETTE_ROOT"), ("imagenet", "IMAGENET_ROOT")])
def test_missing_root_names_the_datasets_own_variable(tmp_path, monkeypatch, data, variable):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.delenv("IMAGENETTE_ROOT", raising=False)
    cfg = config(tmp_path, f"data={data}", "data.root=null")
    with pytest.raises(DataError, match=f"data.root is not set; .*{variable}") as e:
        build_data(cfg.data, seed=0)
    assert "None" not in str(e.value)
    if data == "imagenette":
        assert "IMAGENET_ROOT" not in str(e.value)


def test_a_split_folder_as_root_says_so(tmp_path):
    root = image_folder(tmp_path / "nette", classes=("n01440764", "n02102040"), n=2)
    (root / "val").mkdir()
    cfg = config(tmp_path, "data=imagenette", f"data.root={root / 'train'}")
    with pytest.raises(DataError, match=f"is a split folder: give its parent \\({root}\\)"):
        build_data(cfg.data, seed=0)


def test_progress_bar_counts_the_capped_steps_from_epoch_1(tmp_path):
    r = run_cli(*TINY, "trainer.progress=true", "trainer.max_steps_per_epoch=3", "trainer.batch_size=2",
                f"paths.root_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    bars = [s for s in r.stderr.replace("\r", "\n").splitlines() if s.startswith("epoch ")]
    assert bars and all(b.startswith("epoch 1:") for b in bars), bars[:3]
    assert any("3/3" in b for b in bars) and not any("/21" in b for b in bars), bars[-3:]


def test_debug_fast_caps_evaluation_too(tmp_path):
    import pandas as pd
    from bagnet.config import compose
    assert compose(["debug=fast"]).trainer.max_eval_images == 64
    from conftest import run
    cfg, _ = run(tmp_path, *TINY, "trainer.max_eval_images=5")        # 21 val and 21 test images
    for split in ("val", "test"):
        preds = pd.read_csv(f"{cfg.run_dir}/eval/predictions_{split}.csv.gz")
        assert len(preds) == 5 and preds["index"].is_unique


def test_the_time_estimate_measures_steps_and_extrapolates(tmp_path):
    from bagnet.config import as_dict
    from bagnet.train import estimate_train_seconds
    import torch
    cfg = config(tmp_path, *TINY, "trainer.epochs=3", "trainer.max_steps_per_epoch=2")
    est = estimate_train_seconds(as_dict(cfg), build_data(cfg.data, seed=0), torch.device("cpu"))
    assert est["steps_per_epoch"] == 2 and est["epochs"] == 3 and est["s_per_step"] > 0
    assert est["total_s"] >= est["s_per_step"] * 2 * 3
    assert not (tmp_path / "runs").exists()                           # measuring writes nothing
