"""make reproduce-paper (configs/experiment/paper.yaml, a pipeline; its report experiments/paper.py), end to end
on CPU at a shrunken size, and a known-answer test of the feature-sensitivity protocol.

The end-to-end run uses real ImageNet photos (imagenette-mini, 1000-way labels) and weights files written
here in each source's release format under their own sha256 (the authors' ``bagnet8-<hex>.pth.tar``
holding ``{'state_dict': {'module.' + key: ...}}``, torchvision's ``<stem>-<hex>.pth`` holding a bare
state dict), found by release name in ``weights_dir`` and loaded by the user's code path. Random
weights: the numbers are meaningless, the plumbing is not.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bagnet.config import compose
from bagnet.engine import tf32
from bagnet.run import run_task

IMAGENETTE = Path(os.environ.get("IMAGENETTE_ROOT",
                                 Path(__file__).resolve().parents[2] / "shared/data/imagenette-mini"))
needs_imagenette = pytest.mark.skipif(not (IMAGENETTE / "val").is_dir() and os.environ.get("CI") != "true",
                                      reason="imagenette-mini not found (set IMAGENETTE_ROOT)")

MODELS = {"BagNet-9": {"name": "bagnet", "patch_size": 9}, "BagNet-17": {"name": "bagnet", "patch_size": 17},
          "BagNet-33": {"name": "bagnet", "patch_size": 33}, "AlexNet": {"name": "alexnet"},
          "VGG-16": {"name": "vgg16"}, "ResNet-50": {"name": "resnet50"}, "ResNet-152": {"name": "resnet152"},
          "DenseNet-169": {"name": "densenet169"}}

SHRUNK = ["data.image_size=64", "data.workers=0", "trainer.eval_batch_size=50",
          "experiments.texture.num_images=2", "experiments.texture.steps=3", "experiments.texture.chunk=1",
          "experiments.texture.num_examples=2",
          "experiments.additivity.patch_sizes=[16]", "experiments.additivity.distance_bins=[0,16,48]",
          "experiments.additivity.pairs_per_bin=1", "experiments.additivity.num_images=2",
          "experiments.sensitivity.num_images=2", "experiments.sensitivity.region=16",
          "experiments.sensitivity.max_regions=3", "experiments.sensitivity.report_n=[1,3]",
          "experiments.sensitivity.ig_steps=2", "experiments.sensitivity.batch_size=2",
          "experiments.sensitivity.internal_batch_size=4", "experiments.sensitivity.heatmap_stride=4",
          "experiments.heatmaps.classes=[n01440764,n03888257]", "experiments.heatmaps.num_images=2",
          "experiments.heatmaps.stride=8",
          "experiments.patches.classes=[n01440764,n03888257]", "experiments.patches.k=2",
          "experiments.patches.per_class_images=2", "experiments.patches.distractor_images=4"]


def _save_release(obj, folder: Path, release_file: str) -> Path:
    """Save ``obj`` as ``release_file`` would be named under its own hash (torch.hub naming)."""
    from bagnet.models.weights import HASH_RE
    tmp = folder / "tmp.bin"
    torch.save(obj, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    m = HASH_RE.search(release_file)
    path = folder / f"{release_file[:m.start()]}-{digest}{release_file[m.end() - 1:]}"
    tmp.rename(path)
    return path


def release_weights(folder: Path, models: dict) -> Path:
    """Random weights of ``models`` and of the texture model VGG-19 in ``folder``, each in its release format."""
    from bagnet.models import create_model, default_cfg
    for spec in [*models.values(), {"name": "vgg19"}]:
        kw = {k: v for k, v in spec.items() if k != "name"}
        sd = create_model(spec["name"], **kw).state_dict()
        if spec["name"] == "bagnet":   # the authors' checkpoints: DataParallel keys in a 'state_dict' entry
            sd = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
        _save_release(sd, folder, default_cfg(spec["name"], **kw)["file"])
    return folder


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """The whole pipeline once on every model of the paper (module scope: patched through a MonkeyPatch of its
    own, undone when the run is over)."""
    with pytest.MonkeyPatch.context() as mp:
        return run_paper(tmp_path_factory, mp, MODELS)


def run_paper(tmp_path_factory, monkeypatch: pytest.MonkeyPatch, models: dict, *extra: str) -> dict:
    """The whole pipeline once on ``models`` (of MODELS), with TF32 switched on beforehand and every model's
    forwards watched (the release loader patched through ``monkeypatch`` where the runner and the texture
    experiment call it, for the run only)."""
    if not (IMAGENETTE / "val").is_dir():
        pytest.fail(f"CI=true but imagenette-mini is missing at {IMAGENETTE}")
    import bagnet.context
    import experiments.texture
    from bagnet.models.releases import pretrained_model
    weights_dir = release_weights(tmp_path_factory.mktemp("weights"), models)
    root = tmp_path_factory.mktemp("paper")
    seen, loaded = [], []

    def watched(spec, *a, **k):
        model = pretrained_model(spec, *a, **k)
        loaded.append(spec["name"])
        model.register_forward_pre_hook(lambda mod, args: seen.append(
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)))
        return model

    pairs = [f"[BagNet-33,{m}]" for m in models if m != "BagNet-33"]
    targets = [m for m in MODELS if m in models and not m.startswith("BagNet")]
    overrides = ["experiment=paper", "data=imagenette", f"data.root={IMAGENETTE}",
                 "data.label_space=imagenet1k", "device=cpu", f"paths.root_dir={root}",
                 f"weights_dir={weights_dir}", *SHRUNK,
                 f"experiments.error_overlap.pairs=[{','.join(pairs)}]",
                 f"experiments.sensitivity.targets=[{','.join(targets)}]",
                 *[f"~models.{label}" for label in MODELS if label not in models], *extra]
    with monkeypatch.context() as mp, tf32(True):     # both restored after, whatever happens
        mp.setattr(bagnet.context, "pretrained_model", watched)
        mp.setattr(experiments.texture, "pretrained_model", watched)
        cfg = compose(overrides)
        result = run_task(cfg, overrides)
        after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    return {"cfg": cfg, "overrides": overrides, "result": result, "seen": seen, "loaded": loaded, "after": after}


PROMISED = {"accuracy": (["accuracy", "contrasts", "per_class"], ["accuracy"]),
            "texture": (["accuracy"], ["accuracy", "examples", "synthesis_loss"]),
            "additivity": (["interaction"], ["interaction_vs_distance", "joint_vs_sum"]),
            "error_overlap": (["per_class", "pairs"], ["class_accuracy_scatter", "kappa_matrix"]),
            "sensitivity": (["logit_drop", "curves"], ["logit_drop_vs_n"]),
            "heatmaps": (["heatmaps"], ["heatmaps"]),
            "patches": (["patches"], ["patches_000_n01440764", "patches_701_n03888257"])}  # numbered by class index


def assert_every_part_written(run: dict, models: dict) -> None:
    cfg, result = run["cfg"], run["result"]
    out = Path(cfg.out_dir)
    assert set(result.parts) == set(PROMISED)
    for part, (tables, figures) in PROMISED.items():
        for t in tables:
            assert (out / part / f"{t}.csv").is_file() and (out / part / f"{t}.md").is_file(), (part, t)
        for f in figures:
            assert Image.open(out / part / f"{f}.png").size[0] > 50, (part, f)
            assert (out / part / f"{f}.pdf").stat().st_size > 0, (part, f)
    assert (out / "summary.csv").is_file() and "paper's numbers beside ours" in (out / "README.md").read_text()
    acc = result.parts["accuracy"].tables["accuracy"].set_index("model")
    assert list(acc.index) == list(models) and (acc["n"] == 300).all()     # imagenette-mini's 300 val photos
    heat = result.parts["heatmaps"].tables["heatmaps"]
    assert set(heat["label"]) <= {"n01440764", "n03888257"}                 # images of the listed classes only
    # every model came from the weights folder through the release-name lookup
    raw = json.loads((out / "raw.json").read_text())
    assert set(raw["raw"]["models"]) == set(models)
    for label, spec in raw["raw"]["models"].items():
        assert spec["pretrained"] is True, label
    assert set(run["loaded"]) == {s["name"] for s in models.values()} | {"vgg19"}


def assert_tf32_off_while_running_and_restored_after(run: dict) -> None:
    seen = run["seen"]
    assert len(seen) > 20 and not any(a or b for a, b in seen)     # every forward of every model: TF32 off
    assert run["after"] == (True, True)                            # the caller's setting is restored
    numerics = run["result"].raw["numerics"]
    assert numerics["cuda_matmul_allow_tf32"] is False and numerics["cudnn_allow_tf32"] is False
    assert numerics["guarded_forwards"] > 20
    written = json.loads((Path(run["cfg"].out_dir) / "raw.json").read_text())["raw"]["numerics"]
    assert written["cudnn_allow_tf32"] is False


def assert_a_killed_run_recomputes_only_what_is_missing(run: dict, cnn: str) -> None:
    cfg, first = run["cfg"], run["result"]
    run_dir = Path(cfg.run_dir)
    markers = {p: p.stat().st_mtime_ns for p in run_dir.rglob("unit.pt")}
    assert markers and len(list(run_dir.glob("texture/_cache/chunk_*.pt"))) == 2     # textures kept, chunk by chunk
    assert {p.stem for p in run_dir.glob("predictions/_cache/*.pt")} == set(first.raw["models"])   # and predictions
    shutil.rmtree(run_dir / "additivity" / "AlexNet")            # as if killed before this unit was saved
    (run_dir / "sensitivity" / cnn / "unit.pt").unlink()         # ... or while it was being written
    (run_dir / "texture" / "_cache" / "chunk_000001.pt").unlink()
    second = run_task(compose(run["overrides"]), run["overrides"])
    redone = {p for p in run_dir.rglob("unit.pt") if p not in markers or p.stat().st_mtime_ns != markers[p]}
    assert {p.parent.relative_to(run_dir).as_posix() for p in redone} == {"additivity/AlexNet", f"sensitivity/{cnn}"}
    a = first.parts["additivity"].tables["interaction"]
    b = second.parts["additivity"].tables["interaction"]
    assert np.allclose(a["mean_abs_interaction"], b["mean_abs_interaction"], rtol=1e-5, atol=1e-6)


TWO = {m: MODELS[m] for m in ("BagNet-33", "AlexNet")}   # the paper's BagNet and its smallest-compute CNN


@needs_imagenette
def test_paper_on_two_models(tmp_path_factory, monkeypatch):
    """make reproduce-paper on BagNet-33 and AlexNet: every experiment's tables and figures, TF32 off in every
    forward, a killed run resumed (the BagNet-as-its-own-target control off: it alone takes minutes). On all
    eight models, with the control: the slow tests below."""
    run = run_paper(tmp_path_factory, monkeypatch, TWO, "experiments.sensitivity.bagnet_control=false")
    assert_every_part_written(run, TWO)
    drops = run["result"].parts["sensitivity"].tables["logit_drop"]
    assert set(drops["target"]) == {"AlexNet"} and set(drops[drops.method == "lrp"]["target"]) == {"AlexNet"}
    assert_tf32_off_while_running_and_restored_after(run)
    assert_a_killed_run_recomputes_only_what_is_missing(run, "AlexNet")


@pytest.mark.slow   # minutes on 2 cores (make test-slow, test-full); 2 models: test_paper_on_two_models
@needs_imagenette
def test_paper_writes_every_table_and_figure(paper_run):
    result = paper_run["result"]
    assert_every_part_written(paper_run, MODELS)
    acc = result.parts["accuracy"].tables["accuracy"].set_index("model")
    assert acc.loc["BagNet-33", "published top5"] == 0.876 and acc.loc["ResNet-152", "published top5"] == 0.94046
    assert acc["top5"].between(0, 1).all()
    tex = result.parts["texture"].tables["accuracy"]
    assert set(tex["condition"]) == {"clean", "texture (Gatys)", "tiles 4x4"} and len(tex) == 3 * len(MODELS)
    inter = result.parts["additivity"].tables["interaction"]
    assert set(inter["model"]) == set(MODELS)
    pairs = result.parts["error_overlap"].tables["pairs"]
    pairs = pairs[(pairs.model_a == "BagNet-33") | (pairs.model_b == "BagNet-33")]
    assert len(pairs) == 7 and (pairs["n"] == 300).all()   # BagNet-33 vs the 2 other BagNets and 5 CNNs
    drops = result.parts["sensitivity"].tables["logit_drop"]
    cnns = ["AlexNet", "VGG-16", "ResNet-50", "ResNet-152", "DenseNet-169"]
    assert set(drops["target"]) == set(cnns) | {"BagNet-33"}              # + the BagNet as its own target
    assert set(drops[drops["control"]]["target"]) == {"BagNet-33"}
    lrp = set(drops[drops.method == "lrp"]["target"])
    assert lrp == {"AlexNet", "VGG-16"}        # captum's LRP has no rule for skip connections / concatenation
    support = result.parts["sensitivity"].raw["lrp_support"]
    assert "skip connections" in support["DenseNet-169"] and support["VGG-16"] == "computed"
    for t in cnns:
        assert {"bagnet", "saliency", "deeplift", "integrated_gradients", "occlusion", "random"} <= set(
            drops[drops.target == t]["method"]), t


@pytest.mark.slow   # minutes on 2 cores (make test-slow, test-full); 2 models: test_paper_on_two_models
@needs_imagenette
def test_tf32_is_off_while_the_pipeline_runs_and_restored_after(paper_run):
    assert_tf32_off_while_running_and_restored_after(paper_run)
    assert len(paper_run["seen"]) > 100 and paper_run["result"].raw["numerics"]["guarded_forwards"] > 100


@pytest.mark.slow   # minutes on 2 cores (make test-slow, test-full); 2 models: test_paper_on_two_models
@needs_imagenette
def test_a_killed_run_recomputes_only_what_is_missing(paper_run):
    assert_a_killed_run_recomputes_only_what_is_missing(paper_run, "VGG-16")


# ------------------------------------------------------------------ known answer: sensitivity
def centre_pixel_bagnet(k_offset: float = 10.0) -> nn.Module:
    """A BagNet-9 (the real architecture, width 4) whose every patch logit is ``red(centre pixel) + K``,
    for every class: stem and each stage's first block pass channel 0 through the middle tap of their
    convolutions (offsets 1 + 1 + 2 = 4 = the centre of a 9 px patch), downsampling shortcuts are zero,
    the other blocks' residual branches are zero, K keeps every ReLU in its linear range."""
    from experiments.controls import blank_bagnet
    net = blank_bagnet(9, num_classes=3, width=4)
    with torch.no_grad():
        net.conv1.weight[0, 0] = 1.0
        net.conv2.weight[0, 0, 1, 1] = 1.0
        net.bn1.bias[0] = k_offset
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            first = layer[0]
            c = first.conv2.kernel_size[0] // 2
            first.conv1.weight[0, 0] = 1.0
            first.conv2.weight[0, 0, c, c] = 1.0
            first.conv3.weight[0, 0] = 1.0
            for block in layer[1:]:
                block.bn3.weight.zero_()
        net.fc.weight[:, 0] = 1.0
    return net


def test_bagnet_heatmap_ranking_is_optimal_where_it_provably_must_be():
    """In general a BagNet's own heatmap need not maximise its own logit drop under zero-occlusion: the
    drop of a region depends on every patch that overlaps it (partly occluded patches are not zero-logit
    patches) while the heatmap scores a region by the patches centred in it. Here it provably does:
    the logit is f(x) = K + mean over units of red(centre of unit), linear, so occluding regions removes
    exactly the sum of their centre pixels / 49 (additive); the dense heatmap at (a, b) is red(a, b) + K;
    on an image constant on each 8 x 8 region (blocks 0-6 each hold one centre, block 7 none and is 0),
    ranking by heatmap sum = ranking by red value = ranking by single-region drop. So the BagNet's curve
    equals the analytic optimum (sum of the n largest region drops) for every n, as does Occlusion; methods
    exact for linear models (input x gradient, integrated gradients, DeepLift) tie with it; saliency
    (|gradient| is the same 1/49 in every region) and random do strictly worse."""
    from bagnet.heatmaps import heatmap
    from experiments import sensitivity

    net = centre_pixel_bagnet()
    gen = torch.Generator().manual_seed(0)
    images, optimum = [], []
    for _ in range(3):
        red = torch.zeros(8, 8)
        red[:7, :7] = (torch.rand(7, 7, generator=gen) * 4 - 2)          # distinct values in [-2, 2]
        x = torch.randn(3, 64, 64, generator=gen)                        # green/blue: ignored by the model
        x[0] = red.repeat_interleave(8, 0).repeat_interleave(8, 1)
        images.append(x)
        d = torch.sort(red.flatten() / 49, descending=True).values.double()
        optimum.append(torch.cumsum(d, 0)[:10].numpy())
    images = torch.stack(images)
    # the premises, checked on the model itself
    f = net(images)[:, 1]
    assert torch.allclose(f, 10 + images[:, 0, 4:56:8, 4:56:8].mean((1, 2)), atol=1e-5)
    assert torch.allclose(heatmap(net, images, target=1, stride=1), images[:, 0] + 10, atol=1e-5)

    dataset = [(im, 1) for im in images]
    cfg = {"targets": ["lin"], "bagnet": "lin", "region": 8, "max_regions": 10, "report_n": [1, 5, 10],
           "ig_steps": 16, "num_images": None, "batch_size": 3, "heatmap_stride": 1, "progress": False,
           "methods": ["bagnet", "saliency", "input_x_gradient", "integrated_gradients", "deeplift", "occlusion",
                       "random"]}
    result = sensitivity.run({"lin": net}, dataset, cfg)
    curves = result.tables["curves"]
    best = np.mean(optimum, 0)
    curve = {m: d.sort_values("n")["mean_drop"].to_numpy() for m, d in curves.groupby("method")}
    assert np.allclose(curve["bagnet"], best, atol=1e-5)
    assert np.allclose(curve["occlusion"], best, atol=1e-5)
    auc = result.tables["logit_drop"].set_index("method")["auc"]
    assert (auc["bagnet"] >= auc - 1e-6).all()
    for exact in ("input_x_gradient", "integrated_gradients", "deeplift"):
        assert abs(auc[exact] - auc["bagnet"]) < 1e-4, exact
    assert auc["bagnet"] > 2 * max(auc["saliency"], auc["random"], 1e-3)


def test_the_time_estimate_counts_the_work_of_the_paper_config():
    """scripts/estimate_paper_time.py reads the pipeline config: every experiment with work, the larger sizes of
    experiment=paper_full counted as larger."""
    from scripts.estimate_paper_time import work
    default, full = work(compose(["experiment=paper"])), work(compose(["experiment=paper_full"]))
    assert set(default) == {"accuracy", "texture", "additivity", "sensitivity", "patches"}
    assert all(v > 0 for items in default.values() for v in items.values())
    assert full["texture"]["__vgg19_evals"] == 10 * default["texture"]["__vgg19_evals"]      # 1000 vs 100 images
    assert full["sensitivity"]["DenseNet-169"] == 10 * default["sensitivity"]["DenseNet-169"]
