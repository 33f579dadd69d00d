"""Certificates proven by attack in pixel space (issues 25 and 35): a BagNet on images, every patch location
(worst-case local logits on what each location reaches, checked against what the model changes, and PGD inside
the patch), task=patch_robustness on a BagNet and a CNN, and in the ImageNet pipeline with the authors'
release-format weights. Local-logit space: tests/test_certify.py."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bagnet.certify import (affected, certify_clipping, certify_masking, clipped_predict, clipped_scores,
                            masking_predict, masking_scores, window_size, worst_case)
from bagnet.data import build_data
from bagnet.errors import WeightsError
from experiments.patch_robustness import DEFENCES
from patch_adversary import random_maps

Q = 9


def test_patch_robustness_task_on_a_bagnet_and_a_cnn():
    """Every defence on a BagNet, PatchCleanser and the undefended model on a CNN, on the same images: the
    certificates exist and PGD breaks none of them; PatchCleanser's cost table counts K (K + 1) / 2 forwards."""
    from torch.utils.data import TensorDataset
    from bagnet import create_model
    from experiments.patch_robustness import run
    torch.manual_seed(0)
    model = create_model("bagnet9", width=4, num_classes=3).eval()
    model.fc.bias.data = torch.tensor([40.0, 0.0, 0.0])        # class 0 ahead everywhere: certificates exist
    cnn = create_model("small_cnn", width=4, stages=3, num_classes=3).eval()
    cnn.fc.bias.data = torch.tensor([40.0, 0.0, 0.0])
    x, y = torch.randn(6, 3, 48, 48), torch.tensor([0, 0, 0, 1, 2, 0])
    result = run({"B9": model, "CNN": cnn}, TensorDataset(x, y),
                 {"device": "cpu", "progress": False, "patch_px": [4, 12], "cleanser_masks": 3, "attack_images": 6,
                  "attack_steps": 5, "attack_locations": 1, "num_images": None})
    t = result.tables["patch_robustness"].set_index(["model", "patch_px", "defence", "metric"])
    assert t.loc[("B9", 4, "clipped", "certified"), "top1"] > 0 and t.loc[("B9", 4, "undefended", "certified"), "top1"] == 0
    assert t.loc[("B9", 12, "clipped", "certified"), "top1"] <= t.loc[("B9", 4, "clipped", "certified"), "top1"]
    assert result.raw["certificate_violations"] == 0
    assert set(t.loc["B9"].index.get_level_values("defence")) == set(DEFENCES)
    assert set(t.loc["CNN"].index.get_level_values("defence")) == {"undefended", "patchcleanser"}
    for name in ("B9", "CNN"):
        assert t.loc[(name, 4, "patchcleanser", "certified"), "top1"] > 0, name
        assert {"clean", "certified"} <= set(t.loc[(name, 4, "patchcleanser")].index)
    survives = t.xs("survives PGD", level="metric")
    assert set(survives.index.get_level_values("defence")) == {"clipped", "masking", "masking_detect"}
    cost = result.tables["cost"]
    assert set(cost["model"]) == {"B9", "CNN"} and (cost["masks"] == 9).all() and (cost["all_pairs"] == 45).all()
    assert (cost["forwards_per_image"] < 45).all()      # images labelled 1 and 2 stop after the first round
    assert (cost["seconds_per_image"] > 0).all()


# ---------------------------------------------------------------- a BagNet on images, every patch location
# tests/test_certify.py attacks maps in local-logit space. Here a real BagNet-9 on images: at every patch location
# (every pixel corner, none sampled) PGD inside the patch from several random starts, plus the worst-case
# local logits on the logits that location reaches (affected(), checked against what the model changes).
IMG, IMG_PATCH, BOX = 32, 8, (-2.0, 2.0)   # 32 px: a 3 x 3 map; an 8 px patch reaches 2 x 2 logits; pixel range
IMG_N = (IMG - Q) // 8 + 1
CORNERS = list(itertools.product(range(IMG - IMG_PATCH + 1), repeat=2))


# defence -> (certify(local, label, w), predict(local, w), batched differentiable scores(local, w))
IMG_DEFENCES = {
    "clipped": (lambda m, y, w: certify_clipping(m, y, w, "cbn"), lambda m, w: clipped_predict(m, "cbn"),
                lambda L, w: clipped_scores(L, "cbn")),
    "masking": (lambda m, y, w: certify_masking(m, y, w), lambda m, w: masking_predict(m, w),
                lambda L, w: masking_scores(L, w)),
    "masking_detect": (lambda m, y, w: certify_masking(m, y, w, 0.2), lambda m, w: masking_predict(m, w, 0.2),
                       lambda L, w: masking_scores(L, w, 0.2)),
}


@dataclass
class Fitted:
    model: torch.nn.Module
    images: torch.Tensor        # [n, 3, IMG, IMG]
    labels: list[int]
    local: torch.Tensor         # the model's local logits on the images [n, IMG_N, IMG_N, K]


@pytest.fixture(scope="module")
def fitted(make_tiny_bagnet) -> Fitted:
    """A width-8 BagNet-9 on 10 random images whose head is fitted (least squares: 90 patches, 257 unknowns
    per class) to chosen local logits: every class low, the label raised by margins from none to
    large, so some images are certified at the true window size, more at one too small, and some not at all."""
    model = make_tiny_bagnet(Q, width=8, num_classes=3, dtype=torch.float32)
    model.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    n = 10
    images = torch.rand(n, 3, IMG, IMG, generator=g) * (BOX[1] - BOX[0]) + BOX[0]
    labels = torch.arange(n) % 3
    target = torch.randn(n, IMG_N, IMG_N, 3, generator=g, dtype=torch.float64) * 10 - 30
    target[torch.arange(n), :, :, labels] += torch.linspace(0, 120, n, dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        feats = model.forward_features(images).permute(0, 2, 3, 1).reshape(-1, model.num_features).double()
    feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
    sol = torch.linalg.lstsq(feats, target.reshape(-1, 3)).solution
    model.fc.weight.data, model.fc.bias.data = sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()
    with torch.no_grad():
        local = model.patch_logits(images).permute(0, 2, 3, 1)
    assert (local.double() - target).abs().max() < 0.1            # the fit is exact: the margins are as chosen
    return Fitted(model, images, labels.tolist(), local)


def measured_reach(model: torch.nn.Module, image: torch.Tensor) -> dict[tuple[int, int], tuple[range, range]]:
    """Per patch corner, the rows and columns of local logits that change when the patch is filled with noise
    (measured on the model, not taken from :func:`affected`; in float64, where rounding cannot pass for a change)."""
    model = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(2)
    batch = image.double().repeat(len(CORNERS) + 1, 1, 1, 1)          # the last one stays clean
    for k, (y, x) in enumerate(CORNERS):
        noise = torch.rand(3, IMG_PATCH, IMG_PATCH, generator=g, dtype=torch.float64)
        batch[k, :, y:y + IMG_PATCH, x:x + IMG_PATCH] = noise * (BOX[1] - BOX[0]) + BOX[0]
    with torch.no_grad():
        local = model.patch_logits(batch)
    changed = (local[:-1] - local[-1:]).abs().amax(1) > 1e-6                       # [corners, n, n]
    reach = {}
    for k, corner in enumerate(CORNERS):
        rows, cols = changed[k].any(1).nonzero().flatten().tolist(), changed[k].any(0).nonzero().flatten().tolist()
        reach[corner] = (range(rows[0], rows[-1] + 1), range(cols[0], cols[-1] + 1)) if rows else (range(0), range(0))
    return reach


@pytest.fixture(scope="module")
def reach() -> dict:
    """Per patch corner, the local logits it may change (the certificate's assumption, checked below)."""
    return {(y, x): affected(y, x, IMG_PATCH, Q, IMG_N, IMG_N) for y, x in CORNERS}


def worst_case_flips(local: torch.Tensor, label: int, predict, reached) -> bool:
    """Whether the worst-case local logits on any reached set of logits, for any target class, flip ``predict``;
    also with moderate evidence for the target (robust masking would remove an extreme window)."""
    return not all(predict(worst_case(local, rows, cols, label, t, big)) == label
                   for rows, cols in reached for t in range(local.shape[-1]) if t != label and len(rows)
                   for big in (1.0, 5.0, 20.0, 1e4))


def pgd_flips(model, image, local, label, scores, w, reach, starts=3, steps=5, seed=0) -> bool:
    """Whether PGD inside the patch (sign steps of a quarter of the pixel range, projected on it), at any patch
    corner, from any of ``starts`` uniform random contents, flips the defended prediction. Corners reaching the
    same logits share one crop: the pixels those logits see, so that the crop's local logits are exactly them."""
    g = torch.Generator().manual_seed(seed)
    by_reach: dict[tuple, list] = {}
    for corner, (rows, cols) in reach.items():
        if len(rows):                                  # a patch no logit sees changes nothing
            by_reach.setdefault((rows.start, rows.stop, cols.start, cols.stop), []).append(corner)
    for (r0, r1, c0, c1), corners in by_reach.items():
        top, left = 8 * r0, 8 * c0
        crop = image[:, top:8 * (r1 - 1) + Q, left:8 * (c1 - 1) + Q]
        mask = torch.zeros(len(corners) * starts, 1, *crop.shape[1:])
        for k, (y, x) in enumerate(corners * starts):
            mask[k, :, y - top:y - top + IMG_PATCH, x - left:x - left + IMG_PATCH] = 1
        delta = (torch.rand(len(mask), *crop.shape, generator=g) * (BOX[1] - BOX[0]) + BOX[0]).requires_grad_()
        pad = (0, 0, c0, IMG_N - c1, r0, IMG_N - r1)
        for step in range(steps + 1):
            inside = model.patch_logits(crop * (1 - mask) + delta * mask).permute(0, 2, 3, 1)
            s = scores(local + F.pad(inside - local[r0:r1, c0:c1], pad), w)          # [B, K]
            if (s.argmax(1) != label).any():
                return True
            if step == steps:
                break
            rival = torch.cat([s[:, :label], s[:, label + 1:]], 1).amax(1)
            grad, = torch.autograd.grad((rival - s[:, label]).sum(), delta)
            delta = (delta + 0.25 * (BOX[1] - BOX[0]) * grad.sign()).clamp(*BOX).detach().requires_grad_()
    return False


def test_measured_reach_is_what_the_certificate_assumes(fitted, reach):
    """No patch corner changes a logit outside those :func:`affected` names, some change the whole window of
    window_size (it is tight), and a crop of the pixels some logits see gives exactly them (the attack's
    shortcut). A logit at the edge of the reach may happen not to change (its units there are all dead)."""
    w = window_size(IMG_PATCH, Q)
    measured = measured_reach(fitted.model, fitted.images[0])
    inside = lambda a, b: set(a) <= set(b)   # noqa: E731
    assert all(inside(measured[k][0], reach[k][0]) and inside(measured[k][1], reach[k][1]) for k in CORNERS)
    assert max(max(len(r), len(c)) for r, c in measured.values()) == w == 2
    model, image = copy.deepcopy(fitted.model).double(), fitted.images[3].double()[None]
    with torch.no_grad():                         # float64: equal up to rounding, not merely close
        full, crop = model.patch_logits(image), model.patch_logits(image[..., 8:8 + 8 + Q, 0:Q])
    torch.testing.assert_close(crop, full[..., 1:3, 0:1], atol=1e-9, rtol=1e-12)


def test_batched_defence_scores_predict_as_the_defences(fitted):
    for name, (_, predict, scores) in IMG_DEFENCES.items():
        for w in (1, 2):
            for m in [*fitted.local, *random_maps(20, (IMG_N, IMG_N), seed=3)]:
                assert int(scores(m[None].double(), w).argmax()) == predict(m, w), (name, w)


def certified(fitted, name: str, w: int) -> list[int]:
    certify = IMG_DEFENCES[name][0]
    return [i for i, y in enumerate(fitted.labels) if certify(fitted.local[i], y, w)]


def worst_case_breaks(fitted, reach, name: str, i: int, w: int) -> bool:
    predict = IMG_DEFENCES[name][1]
    reached = set(reach.values())
    return worst_case_flips(fitted.local[i], fitted.labels[i], lambda m: predict(m, w), reached)


def pgd_breaks(fitted, reach, name: str, i: int, w: int, **kw) -> bool:
    scores = IMG_DEFENCES[name][2]
    return pgd_flips(fitted.model, fitted.images[i], fitted.local[i], fitted.labels[i], scores, w, reach, **kw)


@pytest.mark.parametrize("name", list(IMG_DEFENCES))
def test_certified_images_survive_the_search_at_every_patch_location(fitted, reach, name):
    """Every image certified at window_size survives the worst-case local logits at every patch location,
    for every target class; the certified image of least margin (the fixture's margins grow with the index)
    also survives PGD from 3 random starts at all 625 patch corners (every image: the slow test below)."""
    w = window_size(IMG_PATCH, Q)
    ok = certified(fitted, name, w)
    assert len(ok) >= 2                                                            # not trivially zero
    assert not any(worst_case_breaks(fitted, reach, name, i, w) for i in ok)
    assert not pgd_breaks(fitted, reach, name, ok[0], w)


@pytest.mark.parametrize("name", list(IMG_DEFENCES))
def test_a_window_one_too_small_certifies_images_the_same_search_breaks(fitted, reach, name):
    """As if window_size were one too small (the certificate's window and the defence's own): it certifies
    more images, and both the worst case and PGD in pixel space break one of them."""
    w = window_size(IMG_PATCH, Q) - 1
    extra = sorted(set(certified(fitted, name, w)) - set(certified(fitted, name, w + 1)))
    assert extra
    assert any(worst_case_breaks(fitted, reach, name, i, w) for i in extra)
    assert any(pgd_breaks(fitted, reach, name, i, w) for i in extra)


@pytest.mark.slow   # about two minutes on 2 cores: make test-slow / test-full; the tests above are its fast subset
@pytest.mark.parametrize("name", list(IMG_DEFENCES))
def test_pgd_at_every_location_never_flips_any_certified_image(fitted, reach, name):
    w = window_size(IMG_PATCH, Q)
    assert not any(pgd_breaks(fitted, reach, name, i, w, starts=4, steps=10) for i in certified(fitted, name, w))


# ---------------------------------------------------------------- the ImageNet pipeline, release-format weights
# results/paper/README.md's command (model=bagnet33 there; BagNet-9 here, at 64 px, so the test is fast), the
# weights found as a user's are: $BAGNET_WEIGHTS_DIR holding the release file under its own sha256.
IMAGENET_COMMAND = ["task=patch_robustness", "data=imagenet", "model=bagnet9", "model.pretrained=true",
                    "experiments.patch_robustness.patch_share=[0.02]", "experiments.patch_robustness.num_images=null"]
SHRUNK = ["data.image_size=64", "data.workers=0", "device=cpu", "experiments.patch_robustness.attack_steps=2",
          "experiments.patch_robustness.cleanser_masks=2",
          "experiments.patch_robustness.attack_locations=1", "experiments.patch_robustness.progress=false"]
WNIDS = {"n01440764": 0, "n03888257": 701}          # tench, parachute: their ImageNet-1k indices
CONTEST = {"clear": 0, "contested": 4, "wrong": 6}   # per image: side of the block of patches voting for the other


def fake_imagenet(root: Path) -> Path:
    """root/val/<wnid>/*.JPEG: one noise photo of each CONTEST kind per class (train/ is optional)."""
    rng = np.random.default_rng(0)
    for wnid in WNIDS:
        (root / "val" / wnid).mkdir(parents=True)
        for kind in CONTEST:
            photo = Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8))
            photo.save(root / "val" / wnid / f"{kind}.JPEG")
    return root


def designed_logits(dataset, n: int) -> tuple[torch.Tensor, list[int]]:
    """The local logits the head is fitted to [images, n, n, 1000]: 50 for the true class on every patch, except a
    top-left block (CONTEST) voting 40 for the other class present; 0 elsewhere. No decision is near a tie."""
    target = torch.zeros(len(dataset), n, n, 1000, dtype=torch.float64)
    labels = [int(y) for _, y in dataset.samples]
    for i, (path, y) in enumerate(dataset.samples):
        other = sum(WNIDS.values()) - y
        b = CONTEST[Path(path).stem]
        target[i, ..., y] = 50
        target[i, :b, :b, y], target[i, :b, :b, other] = 0, 40
    return target, labels


def fitted_release_weights(dataset, folder: Path) -> tuple[torch.Tensor, list[int]]:
    """The full-width BagNet-9 (random body) with its 1000-way head fitted by least squares to
    :func:`designed_logits` on the pipeline's own preprocessed images, saved as the authors' release file
    (``{'state_dict': {'module.' + key: ...}}``) named under its own sha256: ``bagnet8-<hex>.pth.tar``."""
    from bagnet.models import create_model
    model = create_model("bagnet9").eval()
    images = torch.stack([x for x, _ in dataset])
    with torch.no_grad():
        feats = model.forward_features(images)                               # [B, 2048, n, n]
    target, labels = designed_logits(dataset, feats.shape[-1])
    f = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
    f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    sol = torch.linalg.lstsq(f, target.reshape(-1, 1000)).solution              # [2049, 1000]
    sd = model.state_dict()
    sd["fc.weight"], sd["fc.bias"] = sol[:-1].T.float().contiguous(), sol[-1].float().contiguous()
    tmp = folder / "unnamed"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp)
    tmp.rename(folder / f"bagnet8-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth.tar")
    return target, labels


def expected_rows(target: torch.Tensor, labels: list[int], p: int) -> list[dict]:
    """What the defences and certificates give on the designed logits with the window of patch p."""
    w = window_size(p, Q)
    T = 0.2                                                                     # the config's mask_threshold
    return [{"clipped_clean": clipped_predict(m, "cbn") == y, "clipped_certified": certify_clipping(m, y, w, "cbn"),
             "masking_clean": masking_predict(m, w) == y, "masking_certified": certify_masking(m, y, w),
             "masking_detect_clean": masking_predict(m, w, T) == y,
             "masking_detect_certified": certify_masking(m, y, w, T)} for m, y in zip(target, labels)]


def test_patch_robustness_in_the_imagenet_pipeline_with_release_weights(tmp_path, monkeypatch, run_in_process,
                                                                        compose_config):
    """task=patch_robustness on the ImageNet layout (1000-way labels), the release-format BagNet-9 found in
    $BAGNET_WEIGHTS_DIR and held to its hash, nothing downloaded: each image's per-defence answers are those of
    the logits the head was fitted to (weights not loaded, a head resized to another label space, or labels
    in another space change them), and the table holds every defence and patch size with intervals."""
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    overrides = [*IMAGENET_COMMAND, f"data.root={fake_imagenet(tmp_path / 'imagenet')}", *SHRUNK]
    cfg = compose_config(*overrides)
    dataset = build_data(cfg.data, cfg.seed).split(cfg.split)                   # the images the task will see
    weights = tmp_path / "weights"
    weights.mkdir()
    target, labels = fitted_release_weights(dataset, weights)
    monkeypatch.setenv("BAGNET_WEIGHTS_DIR", str(weights))
    cfg, result = run_in_process(*overrides)

    per_image = result.tables["per_image"]
    assert sorted(set(per_image["label"])) == [0, 701] and len(dataset) == 6
    sizes = sorted(set(per_image["patch_px"]))
    assert sizes == [8, 9, 16]                                   # the config's 8 and 16 px, 2% of 64 px = 9 px
    for p in sizes:
        rows = per_image[per_image["patch_px"] == p].sort_values("index")
        expected = expected_rows(target, labels, p)
        assert rows[list(expected[0])].to_dict("records") == expected, p
        kinds = [Path(dataset.samples[i][0]).stem for i in rows["index"]]
        for kind, (_, r) in zip(kinds, rows.iterrows()):   # what the design implies, independent of certify.py
            assert r["undefended_clean"] == (kind != "wrong") and not r["undefended_certified"]
            if kind == "clear":
                assert r["clipped_certified"] and r["masking_certified"] and r["masking_detect_certified"]
            if kind == "contested":   # clipped: 33 x 1.67 - 16 x 1.52 = 30.6 left for the label; a window of
                # 2 x 2 true patches takes 6.7 of it and may move 8 (certified), one of 3 x 3 takes 15 and may move 18
                assert r["clipped_certified"] == (p == 8)
            if kind == "wrong":
                assert not any(r[f"{d}_clean"] for d in ("clipped", "masking", "masking_detect"))

    table = result.tables["patch_robustness"]
    cells = table[table["metric"].isin(["clean", "certified"])].set_index(["patch_px", "defence", "metric"])
    assert set(cells.index) == {(p, d, m) for p in sizes for d in DEFENCES for m in ("clean", "certified")}
    assert ((cells["lo"] <= cells["top1"]) & (cells["top1"] <= cells["hi"]) & (cells["n"] == 6)).all()
    top1 = cells["top1"].unstack("metric")
    assert (top1["certified"] <= top1["clean"]).all() and (top1["certified"] > 0).any()
    assert result.raw["certificate_violations"] == 0 and result.raw["n_images"] == 6
    out = Path(cfg.out_dir)
    assert (out / "patch_robustness.csv").is_file() and (out / "certified_vs_patch.png").is_file()
    assert json.loads((out / "raw.json").read_text())["raw"]["certificate_violations"] == 0
    release = next(weights.iterdir())                  # a name claiming another hash is refused, not loaded
    release.rename(weights / "bagnet8-00000000.pth.tar")
    with pytest.raises(WeightsError, match="sha256 does not match"):
        run_in_process(*overrides)
