"""Table 1 by the report's protocol (docs/report_protocol.md): the plateau-halving schedule, the notebooks'
preprocessing and scrambling, and ``reproduce-table1`` with ``init=imagenet`` end to end on real 15-Scene
photos, with every weights file written in its release format (random values) and found offline."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from bagnet.config import as_dict, compose, validate
from bagnet.data import build_data
from bagnet.errors import ConfigError, WeightsError
from bagnet.train import PlateauHalving, fit

try:
    from pytorchcv.model_provider import get_model as ptcv_get_model
except ImportError:
    ptcv_get_model = None


# ---------------------------------------------------------------- the schedule
def notebook_loop(val_accs, lr=4e-5, total_epochs=40):
    """The notebooks' training cell transcribed (docs/report_protocol.md): lr used in each epoch, epochs run,
    and the epoch whose weights are kept as best."""
    best_val_acc, tolerate, patiance, lrs, best_epoch = 0, 0, 0, [], None
    for epoch in range(total_epochs):
        lrs.append(lr)
        acc = val_accs[epoch]
        if acc >= best_val_acc:
            best_val_acc, patiance, best_epoch = acc, 0, epoch + 1
        else:
            tolerate += 1
            patiance += 1
        if tolerate >= 3:
            lr /= 2
            tolerate = 0
        if patiance > 15:
            break
    return lrs, len(lrs), best_epoch


def drive(val_accs, max_epochs=40, **kw):
    """PlateauHalving the way ``fit`` drives it."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=4e-5)
    sched = PlateauHalving(opt, **kw)
    lrs, best_epoch = [], None
    for epoch in range(max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        if sched.step(val_accs[epoch]):
            best_epoch = epoch + 1
        if sched.should_stop:
            break
    return lrs, len(lrs), best_epoch, sched


H = 4e-5
SEQUENCES = {  # name -> (val accuracies, expected lr per epoch, epochs run, best epoch)
    "ties are a new best": ([0.5] * 40, [H] * 40, 40, 40),
    # 3 epochs without a new best -> halve; the new best right after does not reset the count since the halving
    "new best right after a halving": ([.5, .4, .4, .4, .6, .5, .5, .7, .6] + [.8] * 31,
                                       [H] * 4 + [H / 2] * 5 + [H / 4] * 31, 40, 40),
    # not consecutive: epochs 2, 4, 6 are the 3 epochs without a new best
    "count is not reset by a new best": ([.5, .4, .6, .5, .7, .6] + [.9] * 34, [H] * 6 + [H / 2] * 34, 40, 40),
    # best at epoch 1, then 16 epochs without: stop after epoch 17; halvings after epochs 4, 7, 10, 13, 16
    "early stop after 16": ([.9] + [.1] * 39, [H] * 4 + [H / 2] * 3 + [H / 4] * 3 + [H / 8] * 3 + [H / 16] * 3
                            + [H / 32], 17, 1),
    # a tie inside a bad run resets the stop count but not the halving count
    "tie resets the stop count": ([.9] + [.1] * 10 + [.9] + [.1] * 28,
                                  None, 28, 12),
}


@pytest.mark.parametrize("name", SEQUENCES)
def test_plateau_halving_follows_the_notebook(name):
    accs, want_lrs, want_epochs, want_best = SEQUENCES[name]
    lrs, epochs, best, sched = drive(accs)
    ref_lrs, ref_epochs, ref_best = notebook_loop(accs)
    assert (lrs, epochs, best) == (ref_lrs, ref_epochs, ref_best)
    if want_lrs is not None:
        assert lrs == want_lrs
    assert (epochs, best) == (want_epochs, want_best)
    assert sched.should_stop == (epochs < 40)


def test_reduce_lr_on_plateau_is_not_the_notebooks_schedule():
    """Why a class of our own: torch's ReduceLROnPlateau resets its count on a new best (and needs a strict
    improvement), so it halves later than the notebook on the same accuracies."""
    accs = [.5, .4, .6, .5, .7, .6] + [.9] * 4
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=H)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2)
    lrs = []
    for acc in accs:
        lrs.append(opt.param_groups[0]["lr"])
        torch_sched.step(acc)
    assert lrs != notebook_loop(accs, total_epochs=len(accs))[0] == drive(accs, max_epochs=len(accs))[0]


def test_halving_restarts_adam_and_state_round_trips():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=H)
    sched = PlateauHalving(opt)
    p.grad = torch.ones(3)
    opt.step()
    for acc in (.5, .4, .4):
        sched.step(acc)
    assert opt.state and opt.param_groups[0]["lr"] == H
    sched.step(.4)
    assert not opt.state and opt.param_groups[0]["lr"] == H / 2   # a new Adam, as the notebook builds
    again = PlateauHalving(torch.optim.Adam([p], lr=H))
    again.load_state_dict(sched.state_dict())
    assert again.state_dict() == sched.state_dict()


def test_plateau_schedule_config_is_checked():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        validate(compose(["trainer.schedule=plateau_halving", "trainer.warmup_epochs=1"]))
    with pytest.raises(ConfigError, match="trainer.schedule"):
        validate(compose(["trainer.schedule=plateau"]))


# ---------------------------------------------------------------- fit: early stop and exact resume
def tiny_cfg(tmp_path, epochs=12, **extra):
    cfg = compose(["model=small_cnn", "model.width=4", "data=synthetic", "data.image_size=64",
                   "data.samples_per_class=4", "data.val_per_class=2", "data.test_per_class=2", "device=cpu",
                   "trainer.schedule=plateau_halving", "trainer.warmup_epochs=0", "trainer.optimizer=adam",
                   "trainer.lr=4e-5", "trainer.weight_decay=0", "trainer.batch_size=4", "trainer.progress=false",
                   f"trainer.epochs={epochs}", "trainer.early_stop=4", "trainer.patience=2", "trainer.precision=fp32",
                   "trainer.max_steps_per_epoch=2", "trainer.bn_recalibrate_batches=0",
                   *[f"{k}={v}" for k, v in extra.items()], f"paths.root_dir={tmp_path}"])
    validate(cfg)
    return as_dict(cfg)


def scripted_val(monkeypatch, accs, fail_at=None):
    """``bagnet.train.evaluate`` answers the scripted val accuracies (one per epoch); ``fail_at``: raise
    at that epoch (1-based), as a killed run."""
    calls = []

    def fake(model, loader, *a, **k):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        return {"top1": accs[len(calls) - 1], "top5": 1.0}, None
    monkeypatch.setattr("bagnet.train.evaluate", fake)
    return calls


ACCS = [.5, .4, .5, .3, .3, .3, .3, .9, .9]   # ties at 3 and 9; stop after 4 epochs without a new best


def test_fit_stops_early_cleanly_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    data = build_data(cfg["data"], seed=0)
    scripted_val(monkeypatch, ACCS)
    full = fit(cfg, data, tmp_path / "full", torch.device("cpu"))
    assert full["stopped_early"] and full["stop_epoch"] == full["epochs"] == 7 and full["max_epochs"] == 12
    # lr per epoch (patience 2): bad epochs 2, 4 -> halve after 4 (the tie at 3 does not reset the count);
    # 5, 6 -> halve after 6; epochs 4-7 without a new best -> stop after 7
    assert [h["lr"] for h in torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["history"]] == \
        [H, H, H, H, H / 2, H / 2, H / 4]
    best = torch.load(tmp_path / "full/checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == 3                       # the tie at epoch 3 is the kept best (>=)
    assert full["lr_decays"] == 2

    # killed during epoch 5's validation, then resumed: same lrs, same stop, same weights
    scripted_val(monkeypatch, ACCS, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data, tmp_path / "resumed", torch.device("cpu"))
    scripted_val(monkeypatch, ACCS[4:])
    resumed = fit(cfg, data, tmp_path / "resumed", torch.device("cpu"))
    assert {k: resumed[k] for k in ("epochs", "stop_epoch", "lr_decays")} == \
        {k: full[k] for k in ("epochs", "stop_epoch", "lr_decays")}
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    assert a["scheduler"] == b["scheduler"]
    assert [h["lr"] for h in a["history"]] == [h["lr"] for h in b["history"]]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # a finished (early-stopped) run is not trained further when called again
    calls = scripted_val(monkeypatch, [])
    again = fit(cfg, data, tmp_path / "full", torch.device("cpu"))
    assert not calls and again["epochs"] == 7 and again["stopped_early"]


# ---------------------------------------------------------------- preprocessing and scrambling
def test_squash_without_augmentation_is_the_notebooks_transform(tmp_path):
    """data.resize=squash + train_augment=false: train, val and test items are Resize((S, S)) + ToTensor +
    Normalize of the image (the notebooks' data_transforms_train2), not a crop."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (50, 90, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    size = 32
    data = build_data({"name": "imagefolder", "root": str(tmp_path), "image_size": size, "resize": "squash",
                       "train_augment": False, "val_fraction": 0.5})
    ref = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(data.mean, data.std)])
    for ds in (data.train, data.val, data.test):
        for i in range(len(ds)):
            x, _ = ds[i]
            want = ref(Image.open(ds.samples[i][0]).convert("RGB"))
            assert x.shape == (3, size, size) and torch.allclose(x, want, atol=1e-5)
    # the default recipe crops: a 90x50 image is not squashed
    crop = build_data({"name": "imagefolder", "root": str(tmp_path), "image_size": size, "val_fraction": 0.5})
    x, _ = crop.test[0]
    assert not torch.allclose(x, ref(Image.open(crop.test.samples[0][0]).convert("RGB")), atol=1e-2)


def test_table1_scrambling_blackens_the_remainder_as_the_notebook():
    from experiments.scrambling import _manipulate
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    cfg = as_dict(compose(["experiment=table1"]).experiments.scrambling) | {"seed": 0}
    black = (-torch.tensor(mean) / torch.tensor(std)).view(3, 1, 1)
    x = torch.randn(2, 3, 66, 66)
    out = _manipulate("scrambled_4x4", 4, x, [0, 1], cfg, mean, std)    # 16 px tiles, 2 px remainder
    assert torch.equal(out[..., 64:, :], black.expand(2, 3, 2, 66))
    assert torch.equal(out[..., :, 64:], black.expand(2, 3, 66, 2))
    tiles = lambda im: sorted(im[:, r:r + 16, c:c + 16].sum().item() for r in range(0, 64, 16)  # noqa: E731
                              for c in range(0, 64, 16))
    assert tiles(out[0]) == pytest.approx(tiles(x[0]))             # the core is a permutation of the tiles
    assert not torch.equal(out[0, :, :64, :64], x[0, :, :64, :64])
    # the signatures' default keeps the remainder in place
    kept = _manipulate("scrambled_4x4", 4, x, [0, 1], {**cfg, "remainder": "keep"}, mean, std)
    assert torch.equal(kept[..., 64:, :], x[..., 64:, :]) and torch.equal(kept[..., :64, :64], out[..., :64, :64])
    # 224 / 4 (the report's) and 64 / 4 have no remainder: nothing is blackened
    y = torch.randn(1, 3, 64, 64)
    assert tiles(_manipulate("scrambled_4x4", 4, y, [0], cfg, mean, std)[0]) == pytest.approx(tiles(y[0]))


# ---------------------------------------------------------------- end to end with release-format weights
@pytest.fixture
def subset_of_scene15(tmp_path, real_data):
    """``subset_of_scene15(classes=("bedroom", "MITcoast"), n_train=5, n_test=3)``: a small imagefolder copy of
    real 15-Scene photos under ``tmp_path``: train/<class>/, test/<class>/."""
    def subset_of_scene15(classes=("bedroom", "MITcoast"), n_train=5, n_test=3) -> Path:
        src = real_data("scene15", "train")
        root = tmp_path / "scene15-subset"
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                (root / split / c).mkdir(parents=True)
                for f in sorted((src / split / c).iterdir())[:n]:
                    shutil.copy(f, root / split / c / f.name)
        return root
    return subset_of_scene15


def save_as(sd: dict, directory: Path, stem: str, ext: str, digest: str) -> Path:
    """torch.save ``sd`` as '<stem>-<hash prefix of the file>.<ext>' (the release naming; sha256 for the
    authors' files as torch.hub checks them, sha1 for pytorchcv's)."""
    tmp = directory / "unnamed"
    torch.save(sd, tmp)
    h = getattr(hashlib, digest)(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(directory / f"{stem}-{h}.{ext}")


@pytest.fixture(scope="module")
def release_weights(tmp_path_factory):
    """Every Table 1 model's ImageNet weights in their release format, random values: the authors'
    bagnet8/16/32-<sha256>.pth.tar and pytorchcv's <arch>-<err>-<sha1>.pth. Returns (dir, state dicts)."""
    if ptcv_get_model is None:
        pytest.skip("pytorchcv not installed (pip install pytorchcv==0.0.74): no pytorchcv state dicts")
    from bagnet.models import create_model
    d = tmp_path_factory.mktemp("weights")
    sds = {}
    torch.manual_seed(0)
    for q, stem in ((9, "bagnet8"), (17, "bagnet16"), (33, "bagnet32")):
        sds[stem] = create_model(f"bagnet{q}", width=64).state_dict()
        save_as(sds[stem], d, stem, "pth.tar", "sha256")
    for arch in ("resnet50", "densenet121", "densenet169", "cbam_resnet50"):
        sds[arch] = ptcv_get_model(arch, pretrained=False).state_dict()
        save_as(sds[arch], d, f"{arch}-0000", "pth", "sha1")
    return d, sds


@pytest.fixture
def offline(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise URLError("network disabled in tests")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


E2E = ["experiment=table1", "init=imagenet", "data=imagefolder", "data.image_size=64",
       "data.val_fraction=0.4", "device=cpu", "trainer.epochs=2", "trainer.max_steps_per_epoch=1",
       "trainer.progress=false", "trainer.eval_batch_size=16", "trainer.channels_last=false", "run_name=e2e"]


# row label -> (release file, a weight to compare, the release state dict's key in release_weights)
RELEASES = {"ResNet-50": ("resnet50-0658-828686d7.pth", "conv1.weight", "resnet50"),
            "DenseNet-121": ("densenet121-0704-cf90d139.pth", None, "densenet121"),
            "DenseNet-169": ("densenet169-0719-27139105.pth", "features.denseblock4.denselayer32.conv2.weight",
                             "densenet169"),
            "CBAM-ResNet-50": ("cbam_resnet50-0605-a1172fe6.pth", "layer4.2.conv3.weight", "cbam_resnet50"),
            "BagNet-9": ("bagnet8-34f4ccd2.pth.tar", "layer4.2.conv3.weight", "bagnet8"),
            "BagNet-17": ("bagnet16-105524de.pth.tar", None, "bagnet16"),
            "BagNet-33": ("bagnet32-2ddd53ed.pth.tar", "layer4.2.conv3.weight", "bagnet32")}


def reproduce_table1_imagenet(tmp_path, monkeypatch, release_weights, subset_of_scene15, *extra: str) -> None:
    """make reproduce-table1 INIT=imagenet on a 15-Scene subset with release-format weights: the report's recipe,
    each model fine-tuned from its release file."""
    from bagnet.run import run_task
    wdir, sds = release_weights
    monkeypatch.setenv("BAGNET_WEIGHTS_DIR", str(wdir))
    root = subset_of_scene15()
    overrides = [*E2E, f"data.root={root}", f"paths.root_dir={tmp_path}", *extra]
    cfg = compose(overrides)
    assert (cfg.trainer.optimizer, cfg.trainer.lr, cfg.trainer.batch_size, cfg.trainer.label_smoothing,
            cfg.trainer.schedule, cfg.trainer.patience, cfg.trainer.early_stop, cfg.trainer.factor,
            cfg.data.resize, cfg.data.train_augment) == ("adam", 4e-5, 4, 0.0, "plateau_halving", 3, 16, 0.5,
                                                         "squash", False)
    labels = list(cfg.pipeline.train)
    result = run_task(cfg, overrides)
    table = result.tables["table1"]
    assert list(table["model"]) == labels
    assert (table["init"] == "imagenet").all()
    assert list(table["weights"]) == [RELEASES[label][0] for label in labels]
    assert table[["val", "test", "scrambled test"]].apply(lambda c: c.between(0, 1)).all().all()
    raw = result.raw
    from bagnet.checkpoint import load_run
    from bagnet.models.pytorchcv_weights import pytorchcv_to_ours
    for label in labels:
        _, key, file_key = RELEASES[label]
        if key is None:
            continue
        entry = raw[label]
        assert Path(entry["weights_file"]).parent == wdir
        model, spec = load_run(Path(entry["run_dir"]) / "checkpoints" / "best.pt")
        head = model.classifier if label.startswith("Dense") else model.fc
        assert isinstance(head, torch.nn.Linear) and head.out_features == 2 == spec["num_classes"]
        sd = sds[file_key] if file_key.startswith("bagnet") else pytorchcv_to_ours(sds[file_key], file_key)
        got = model.state_dict()[key]
        # fine-tuned from the file's weights: within Adam's few 4e-5 steps of them, far from a fresh init
        assert (got - sd[key]).abs().max() < 1e-3, label
        s = entry["summary"]
        assert s["max_epochs"] == 2 and s["epochs"] in (1, 2) and s["lr_decays"] == 0
    md = (Path(cfg.out_dir) / "table1.md").read_text()
    assert Path(cfg.out_dir).name == "default-imagenet"
    assert "`init=imagenet`" in md and "BagNets-Reprodicbility-Challenge" in md and "no remainder" in md
    assert "| init | weights |" in md


def test_reproduce_table1_imagenet_on_two_models(tmp_path, monkeypatch, offline, release_weights, subset_of_scene15):
    """BagNet-9 (the authors' release format) and ResNet-50 (pytorchcv's), no extra seeds, no time estimate (its
    table1 path: test_table1_pipeline_on_three_models); every model and the extra seeds:
    test_reproduce_table1_imagenet_end_to_end."""
    others = [f"~table1.models.imagenet.{label}" for label in RELEASES if label not in ("ResNet-50", "BagNet-9")]
    reproduce_table1_imagenet(tmp_path, monkeypatch, release_weights, subset_of_scene15, "pipeline.extra_seeds=[]",
                              "pipeline.estimate=false", *others)


@pytest.mark.slow   # minutes on 2 cores: make test-slow / test-full (CI runs both); 2 models: the test above
def test_reproduce_table1_imagenet_end_to_end(tmp_path, monkeypatch, offline, release_weights, subset_of_scene15):
    reproduce_table1_imagenet(tmp_path, monkeypatch, release_weights, subset_of_scene15)


def test_reproduce_table1_names_every_missing_file_before_training(tmp_path, monkeypatch, offline, release_weights,
                                                                   capsys, subset_of_scene15):
    from bagnet.run import run_task
    wdir, _ = release_weights
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in wdir.iterdir():
        if not f.name.startswith(("bagnet16-", "densenet169-")):
            (partial / f.name).symlink_to(f)
    monkeypatch.setenv("BAGNET_WEIGHTS_DIR", str(partial))
    root = subset_of_scene15(n_train=2, n_test=1)
    overrides = [*E2E, f"data.root={root}", f"paths.root_dir={tmp_path}"]
    with pytest.raises(WeightsError) as err:
        run_task(compose(overrides), overrides)
    line = str(err.value)            # the error: one short line naming the files and both ways out
    assert "\n" not in line and len(line) < 400 and "2 of 7 weights files missing, nothing was trained" in line
    assert "BagNet-17" in line and "DenseNet-169" in line and "INIT=scratch" in line
    listed = capsys.readouterr().out.splitlines()   # each file's url and where to put it, above the error
    dense = next(ln for ln in listed if ln.strip().startswith("DenseNet-169: "))
    bag = next(ln for ln in listed if ln.strip().startswith("BagNet-17: "))
    assert "densenet169-0719-27139105.pth" in dense
    assert "https://github.com/osmr/imgclsmob/releases/download/v0.0.3/densenet169-0719-27139105.pth.zip" in dense
    assert "bagnet16-105524de.pth.tar" in bag and "bitbucket.org" in bag
    for ln in (dense, bag):
        assert "$BAGNET_WEIGHTS_DIR" in ln and str(partial) in ln and "model.weights=" in ln
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fused_optimizer_is_the_same_update_and_not_part_of_the_identity(optimizer):
    """trainer.fused_optimizer changes the kernel, not the rule: the same steps give the same weights (to
    float rounding), and a run trained with it is the same run (resumable/reusable without it)."""
    from bagnet.identity import run_identity
    from bagnet.train import build_optimizer
    t = {"optimizer": optimizer, "lr": 1e-2, "weight_decay": 0.01}
    weights = []
    for fused in (False, True):
        torch.manual_seed(0)
        # (no BatchNorm after a biased layer: that bias's gradient is rounding noise, which Adam amplifies)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = build_optimizer(model, {**t, "fused_optimizer": fused})
        assert bool(opt.defaults.get("fused")) == fused
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            loss = model(torch.randn(6, 8, generator=g)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).parameters()])
    assert (weights[0] - start).abs().max() > 1e-2          # the steps did move the weights
    cfg = {"model": {"name": "x"}, "data": {}, "seed": 0, "trainer": {"schedule": "cosine", **t}}
    fused_cfg = {**cfg, "trainer": {**cfg["trainer"], "fused_optimizer": True}}
    assert run_identity(cfg) == run_identity(fused_cfg)


# ---------------------------------------------------------------- init=scratch: its own recipe
SCRATCH_RECIPE = {"optimizer": "adamw", "lr": 1.0e-3, "weight_decay": 0.05, "batch_size": 32,
                  "label_smoothing": 0.1, "schedule": "cosine", "warmup_epochs": 2, "precision": "auto",
                  "bn_recalibrate_batches": 16}
REPORT_PROTOCOL = {"optimizer": "adam", "lr": 4.0e-5, "weight_decay": 0.0, "batch_size": 4,
                   "label_smoothing": 0.0, "schedule": "plateau_halving", "bn_recalibrate_batches": 0}


@pytest.mark.parametrize("profile, epochs", [("cpu", 20), ("gpu", 40)])
def test_init_scratch_composes_its_own_recipe_not_the_fine_tuning_one(profile, epochs):
    base = ["experiment=table1", f"profile={profile}"]
    scratch = as_dict(compose(base + ["init=scratch"]))
    assert scratch["init"] == "scratch" and scratch["run_name"] == "table1-scratch-seed0"
    assert {k: scratch["trainer"][k] for k in SCRATCH_RECIPE} == SCRATCH_RECIPE
    assert scratch["trainer"]["epochs"] == epochs
    assert scratch["data"]["train_augment"] is True and scratch["data"]["crop_scale"] == [0.35, 1.0]
    assert scratch["data"]["resize"] == "squash"   # the report's eval images stay
    assert scratch["experiments"]["scrambling"]["grids"] == [4]
    assert scratch["experiments"]["scrambling"]["remainder"] == "black"
    # the fine-tuning protocol is untouched for the report's starting points (and is the default)
    for cfg in (as_dict(compose(base + ["init=imagenet"])), as_dict(compose(base))):
        assert cfg["init"] == "imagenet"
        assert {k: cfg["trainer"][k] for k in REPORT_PROTOCOL} == REPORT_PROTOCOL
        assert cfg["data"]["train_augment"] is False
    # the signatures find the runs of the recipe they are asked for, VGG-16 with BatchNorm from scratch
    sig = as_dict(compose(["task=scrambling", "experiment=signatures", f"profile={profile}", "init=scratch"]))
    assert sig["run_name"] == "table1-scratch-seed0" and sig["data"]["resize"] == "squash"
    assert sig["models"]["VGG-16"].split("/")[-2] == "vgg16_bn"
