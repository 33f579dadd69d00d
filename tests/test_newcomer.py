"""Issue 24, as a new user meets the suite: messages that name the right variable and folder, a progress
bar that counts what will run, and a missing-weights error that fits on one line."""
from __future__ import annotations

import pytest

from bagnet.data import DataError, build_data


@pytest.mark.parametrize("data, variable", [("imagenette", "IMAGENETTE_ROOT"), ("imagenet", "IMAGENET_ROOT")])
def test_missing_root_names_the_datasets_own_variable(tmp_path, monkeypatch, data, variable, compose_config):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    monkeypatch.delenv("IMAGENETTE_ROOT", raising=False)
    cfg = compose_config(f"data={data}", "data.root=null")
    with pytest.raises(DataError, match=f"data.root is not set; .*{variable}") as e:
        build_data(cfg.data, seed=0)
    assert "None" not in str(e.value)
    if data == "imagenette":
        assert "IMAGENET_ROOT" not in str(e.value)


def test_a_split_folder_as_root_says_so(tmp_path, compose_config, make_image_folder):
    root = make_image_folder(tmp_path / "nette", classes=("n01440764", "n02102040"), n=2)
    (root / "val").mkdir()
    cfg = compose_config("data=imagenette", f"data.root={root / 'train'}")
    with pytest.raises(DataError, match=f"is a split folder: give its parent \\({root}\\)"):
        build_data(cfg.data, seed=0)


def test_progress_bar_counts_the_capped_steps_from_epoch_1(tmp_path, run_cli, tiny_overrides):
    r = run_cli(*tiny_overrides, "trainer.progress=true", "trainer.max_steps_per_epoch=3", "trainer.batch_size=2",
                f"paths.root_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    bars = [s for s in r.stderr.replace("\r", "\n").splitlines() if s.startswith("epoch ")]
    assert bars and all(b.startswith("epoch 1:") for b in bars), bars[:3]
    assert all("/3 [" in b for b in bars if "it/s" in b or "s/it" in b), bars[-3:]   # total: the capped steps
    assert not any("/21 [" in b for b in bars), bars[-3:]


def test_debug_fast_caps_evaluation_too(tmp_path, run_in_process, tiny_overrides):
    import pandas as pd
    from bagnet.config import compose
    assert compose(["debug=fast"]).trainer.max_eval_images == 64
    cfg, _ = run_in_process(*tiny_overrides, "trainer.max_eval_images=5")        # 21 val and 21 test images
    for split in ("val", "test"):
        preds = pd.read_csv(f"{cfg.run_dir}/eval/predictions_{split}.csv.gz")
        assert len(preds) == 5 and preds["index"].is_unique


def test_the_time_estimate_measures_steps_and_extrapolates(tmp_path, compose_config, tiny_overrides):
    from bagnet.config import as_dict
    from bagnet.estimate import estimate_train_seconds
    import torch
    cfg = compose_config(*tiny_overrides, "trainer.epochs=3", "trainer.max_steps_per_epoch=2")
    est = estimate_train_seconds(as_dict(cfg), build_data(cfg.data, seed=0), torch.device("cpu"))
    assert est["steps_per_epoch"] == 2 and est["epochs"] == 3 and est["s_per_step"] > 0
    assert est["total_s"] >= est["s_per_step"] * 2 * 3
    assert not (tmp_path / "runs").exists()                           # measuring writes nothing


def test_imagenet_classes_are_shown_by_name_and_the_wnid_is_kept():
    import numpy as np
    import pandas as pd
    from bagnet.data.names import display_names
    from experiments.error_overlap import run as error_overlap
    assert display_names(["n01440764", "n03888257", "bedroom"]) == ["tench", "parachute", "bedroom"]
    labels = np.array([0, 0, 1, 1])
    preds = {m: pd.DataFrame({"index": range(4), "label": labels, "pred": labels,
                              **{f"top5_{k}": labels for k in range(5)}}) for m in ("A", "B")}
    per_class = error_overlap(preds, ["n01440764", "n03888257"], {}).tables["per_class"]
    assert list(per_class["class_name"][:2]) == ["tench", "parachute"]
    assert list(per_class["class_id"][:2]) == ["n01440764", "n03888257"]


def test_heatmap_and_patch_figures_are_titled_with_class_names():
    import torch
    from bagnet import create_model
    from experiments.explain import heatmaps_result, patches_result
    classes = ["n01440764", "n03888257"]
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 48, 48), torch.tensor([0, 1, 0, 1]))
    model = create_model("bagnet", patch_size=9, width=4, num_classes=2).eval()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    heat = heatmaps_result({"BagNet-9": model}, data, classes, mean, std, num_images=2, seed=0, device="cpu",
                           stride=1, evidence="relative")
    titles = [ax.get_title() for ax in heat.figures["heatmaps"].axes]
    assert {"tench", "parachute"} & set(titles) and not any(t.startswith("n0") for t in titles)
    assert {"label", "label_name"} <= set(heat.tables["heatmaps"].columns)
    patches = patches_result({"BagNet-9": model}, data, classes, mean, std, k=2, per_class_images=None,
                             device="cpu", max_per_image=2, evidence="relative")
    assert "most predictive for 'tench'" in [ax.get_title(loc="left") for ax in patches.figures[
        "patches_000_n01440764"].axes]
    assert set(patches.tables["patches"]["class_name"]) == {"tench", "parachute"}


def test_explaining_another_split_than_the_checkpoint_was_trained_with_is_refused(tmp_path, run_in_process,
                                                                                  make_image_folder, tiny_overrides):
    from bagnet.errors import ConfigError
    root = make_image_folder(tmp_path / "nette", classes=("n01440764", "n03888257"), n=10)
    (root / "val").mkdir()
    for c in ("n01440764", "n03888257"):
        (root / "val" / c).mkdir()
        for p in sorted((root / "train" / c).iterdir())[:2]:
            p.rename(root / "val" / c / p.name)
    data = ["data=imagenette", f"data.root={root}", "data.image_size=48", "data.label_space=compact"]
    cfg, _ = run_in_process(*data, "data.val_from_train=0.25", *tiny_overrides[5:])
    with pytest.raises(ConfigError, match=r"data\.val_from_train: 0\.25 -> 0\.5"):   # its training images
        run_in_process("task=heatmaps", *data, "data.val_from_train=0.5", f"checkpoint={cfg.run_dir}", "split=val",
            *tiny_overrides[5:])


def test_heatmaps_of_a_users_own_image_files(tmp_path, run_in_process, make_image_folder, tiny_overrides):
    import pandas as pd
    from PIL import Image as PILImage
    root = make_image_folder(tmp_path / "photos", classes=("cat", "dog"), n=6)
    data = ["data=imagefolder", f"data.root={root}", "data.image_size=32", *tiny_overrides[5:]]
    cfg, _ = run_in_process(*data)
    mine = tmp_path / "mine" / "dog"                      # a folder named like a class: its true label
    mine.mkdir(parents=True)
    PILImage.new("RGB", (61, 40), (200, 30, 30)).save(mine / "wide.png")     # any size, not square
    PILImage.new("RGB", (40, 40), (30, 200, 30)).save(tmp_path / "mine" / "loose.jpg")
    _, result = run_in_process("task=heatmaps", *data, f"checkpoint={cfg.run_dir}",
                               f"experiments.heatmaps.images={tmp_path / 'mine'}", f"out_dir={tmp_path / 'out'}")
    table = result.tables["images"].set_index(result.tables["images"]["file"].map(lambda f: f.rsplit("/", 1)[-1]))
    assert set(table.index) == {"wide.png", "loose.jpg"}
    assert table.loc["wide.png", "true"] == "dog" and pd.isna(table.loc["loose.jpg", "true"])
    assert table.loc["wide.png", "height"] == 32 and table.loc["wide.png", "width"] == 49   # short side 32
    fig = result.figures[next(f for f in result.figures if f.endswith("_wide.png"))]
    assert "predicts" in fig._suptitle.get_text()
    labels = [ax.get_label() for ax in fig.axes]
    assert "<colorbar>" in labels                                                   # each heatmap has its bar
    assert (tmp_path / "out" / "images.csv").is_file()
