"""Certificates proven by attack in local-logit space (issues 25 and 35): every certified map survives the
exhaustive local-logit adversary (tests/patch_adversary.py) at every window a patch reaches, for every q,
patch sizes whose window is below, equal to and above the grid side, square and rectangular grids;
certificates exist; a window one too small, and PatchGuard's reference bound for masking with detection,
certify maps the same adversary breaks. Holes 1-3 of issue 35 each have their own test (each failed on the
code before the fix). Pixel space: tests/test_certify_pixels.py."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from bagnet.certify import (affected, certify_clipping, certify_masking, clipped_predict, masking_predict,
                            window_size, worst_case)
from patch_adversary import clipped_scorer, find_flip, grid_of, masking_scorer, random_maps, reachable

Q, IMAGE, PATCH = 9, 56, 8                 # BagNet-9 on 56 px images: a 6 x 6 map of local logits
N = (IMAGE - Q) // 8 + 1

# (q, p, image (H, W)): the window w = ceil((p + q - 1) / 8) below, equal to and above the grid's sides
CONFIGS = [(9, 8, (56, 56)),       # 6 x 6 grid, w = 2
           (17, 16, (64, 64)),     # 6 x 6, w = 4
           (33, 16, (112, 112)),   # 10 x 10, w = 6 (the demo's BagNet-33 at 16 px)
           (9, 16, (32, 64)),      # 3 x 7, w = 3: every row
           (9, 24, (40, 40)),      # 4 x 4, w = 4: the whole grid
           (33, 5, (64, 64)),      # 4 x 4, w = 5: above it
           (33, 8, (64, 160)),     # 4 x 16, w = 5 (hole 3's grid)
           (17, 24, (64, 48))]     # 6 x 4, w = 5: every column
COVERING = {(9, 24, (40, 40)), (33, 5, (64, 64))}

# defence -> (certify(map, label, w), predict(map, w), independent scorer(w), masking's (w, T) for the adversary)
DEFENCES = {
    "clipped": (lambda m, y, w: certify_clipping(m, y, w, "cbn"), lambda m, w: clipped_predict(m, "cbn"),
                lambda w: clipped_scorer("cbn"), None),
    "clipped_relu1": (lambda m, y, w: certify_clipping(m, y, w, "relu", 1.0), lambda m, w: clipped_predict(m, "relu", 1.0),
                      lambda w: clipped_scorer("relu", 1.0), None),
    "masking": (lambda m, y, w: certify_masking(m, y, w), lambda m, w: masking_predict(m, w),
                lambda w: masking_scorer(w, 0.0), 0.0),
    "masking_detect": (lambda m, y, w: certify_masking(m, y, w, 0.2), lambda m, w: masking_predict(m, w, 0.2),
                       lambda w: masking_scorer(w, 0.2), 0.2),
}


def breaks(name: str, local: torch.Tensor, label: int, q: int, p: int, image) -> bool:
    """Whether the exhaustive adversary flips the defence ``name`` on ``local`` (window of patch p, model q)."""
    _, predict, scorer, threshold = DEFENCES[name]
    w = window_size(p, q)
    masking = None if threshold is None else (w, threshold)
    return find_flip(local, label, scorer(w), reachable(p, q, image), lambda m: predict(m, w), masking) is not None


def certified_maps(name: str, q: int, p: int, image, n: int, seed: int = 0) -> list[torch.Tensor]:
    certify = DEFENCES[name][0]
    return [m for m in random_maps(n, grid_of(image, q), seed=seed) if certify(m, 0, window_size(p, q))]


def test_window_covers_every_patch_location():
    w = window_size(PATCH, Q)
    assert w == 2
    spans = {tuple(map(len, affected(y, x, PATCH, Q, N, N))) for y in range(IMAGE - PATCH + 1)
             for x in range(IMAGE - PATCH + 1)}
    assert max(max(s) for s in spans) == w                   # some location reaches w rows: w is tight
    for q, p, image in CONFIGS:                              # per axis, clamped to the grid
        h, ww = grid_of(image, q)
        reach = reachable(p, q, image)
        assert max(len(r) for r, _ in reach) == min(window_size(p, q), h)
        assert max(len(c) for _, c in reach) == min(window_size(p, q), ww)


# ---------------------------------------------------------------- issue 35's holes, each failed on the old code
def test_hole1_masking_with_detection_is_broken_by_raising_a_true_class_cell():
    """The issue's counterexample: 7 x 7 grid, true class 1.0, other 0.78, p = 8, q = 9 (w = 2), T = 0.2. The
    attacker owning rows/cols 2-3 removes the true class there but raises (2, 2) to 1000: detection masks a
    window reaching three clean true-class cells; the other class at 2.175 stays under the threshold."""
    local = torch.zeros(7, 7, 2)
    local[..., 0], local[..., 1] = 1.0, 0.78
    w = window_size(8, 9)
    assert (range(2, 4), range(2, 4)) in reachable(8, 9, (64, 64))               # a patch reaches that window
    attacked = local.clone()
    attacked[2:4, 2:4, 0], attacked[2, 2, 0], attacked[2:4, 2:4, 1] = 0, 1000, 2.175
    assert masking_predict(local, w, 0.2) == 0 and masking_predict(attacked, w, 0.2) == 1
    assert not certify_masking(local, 0, w, 0.2)
    assert certify_masking(local * torch.tensor([1.0, 0.5]), 0, w, 0.2)           # a wider margin is certified
    assert not breaks("masking_detect", local * torch.tensor([1.0, 0.5]), 0, 9, 8, (64, 64))


def test_hole2_a_window_covering_the_grid_certifies_nothing_and_ties_go_to_the_lowest_class(make_tiny_bagnet):
    """A random BagNet-33 at 64 px (a 4 x 4 grid) and a 5 px patch (w = 5): the patch may rewrite every local
    logit, so no defence certifies any image; robust masking removes everything from every class, every score
    is exactly 0, and the prediction is class 0 (argmax's tie rule), not float noise."""
    model = make_tiny_bagnet(33, width=8, num_classes=3, dtype=torch.float32)
    images = torch.randn(100, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        local = model.patch_logits(images).permute(0, 2, 3, 1)
    w = window_size(5, 33)
    assert local.shape[1:3] == (4, 4) and w == 5
    for m in local:
        y = clipped_predict(m, "cbn")                  # the label a certificate would be asked about
        for label in {y, int(m.sum((0, 1)).argmax()), masking_predict(m, w), masking_predict(m, w, 0.2)}:
            assert not certify_clipping(m, label, w, "cbn") and not certify_clipping(m, label, w, "relu", 1.0)
            assert not certify_masking(m, label, w) and not certify_masking(m, label, w, 0.2)
        assert masking_predict(m, w) == 0 and masking_predict(m, w, 0.2) == 0


def test_hole3_a_rectangular_grid_gets_a_window_per_axis():
    """A 4 x 16 grid (q = 33, 64 x 160 px) and an 8 px patch: the patch reaches 4 x 5 local logits. Every
    clipped certificate survives the worst case at every window a patch reaches (a 4 x 4 window would
    certify maps the 4 x 5 worst case breaks)."""
    q, p, image = 33, 8, (64, 160)
    w = window_size(p, q)
    reach = reachable(p, q, image)
    assert max(len(r) * len(c) for r, c in reach) == 4 * 5
    maps = random_maps(200, grid_of(image, q), seed=1)
    certified = [m for m in maps if certify_clipping(m, 0, w, "cbn")]
    assert len(certified) >= 5
    for m in certified:
        assert all(clipped_predict(worst_case(m, r, c, 0, t), "cbn") == 0 for r, c in reach for t in (1, 2))


def test_ties_are_certified_the_way_argmax_breaks_them():
    """Integer local logits clipped to [0, 1], where the worst case ties exactly: a tie keeps the label when
    the other class has the higher index, and flips it when it has the lower one; the certificate says so."""
    local = torch.zeros(4, 4, 2)
    local[..., 0] = 1.0
    local[:2, :4, 1] = 1.0                      # class 1: 8 cells; class 0: 16. A 2 x 2 window moves 8 of it
    w = 2                                       # worst case: 16 - 4 = 12 for class 0 vs 8 + 4 = 12 for class 1
    reach = [(range(i, i + 2), range(j, j + 2)) for i in range(3) for j in range(3)]
    attacked = [worst_case(local, r, c, 0, 1) for r, c in reach]
    assert min(float(a.clamp(0, 1).sum((0, 1))[0] - a.clamp(0, 1).sum((0, 1))[1]) for a in attacked) == 0
    assert all(clipped_predict(a, "relu", 1.0) == 0 for a in attacked)
    assert certify_clipping(local, 0, w, "relu", 1.0)
    swapped = local.flip(-1)                    # the same map with the classes' indices swapped: label 1
    assert any(clipped_predict(worst_case(swapped, r, c, 1, 0), "relu", 1.0) == 0 for r, c in reach)
    assert clipped_predict(swapped, "relu", 1.0) == 1 and not certify_clipping(swapped, 1, w, "relu", 1.0)


# ---------------------------------------------------------------- the defences and the adversary's own scorers agree
def test_defences_match_their_independent_scorers():
    """bagnet/certify.py's predictions equal the adversary's scorers' argmax (written from the papers), on
    random maps of every config, attacked maps included."""
    for (q, p, image), name in itertools.product(CONFIGS, DEFENCES):
        _, predict, scorer, _ = DEFENCES[name]
        w = window_size(p, q)
        maps = random_maps(12, grid_of(image, q), seed=2)
        r, c = reachable(p, q, image)[0]
        maps += [worst_case(m, r, c, 0, 1, big) for m in maps[:6] for big in (3.0, 1e4)]
        assert [predict(m, w) for m in maps] == scorer(w)(torch.stack(maps).double()).argmax(1).tolist(), (q, p, name)


# ---------------------------------------------------------------- the exhaustive adversary
@pytest.mark.parametrize("name", list(DEFENCES))
def test_certified_maps_survive_the_exhaustive_adversary(name):
    """Fast subset (24 random maps per config, 12 for the costlier masking defences; make test-slow: 400): no
    certificate broken; certificates exist where the window leaves part of the grid, and none where it covers it."""
    found = {}
    for q, p, image in CONFIGS:
        certified = certified_maps(name, q, p, image, 12 if name.startswith("masking") else 24)
        found[(q, p, image)] = len(certified)
        assert not any(breaks(name, m, 0, q, p, image) for m in certified), (name, q, p, image)
    assert all(n == 0 for cfg, n in found.items() if cfg in COVERING)
    assert sum(n for cfg, n in found.items() if cfg not in COVERING) >= 10, found


@pytest.mark.slow   # minutes on 2 cores: make test-slow; the test above is its fast subset
@pytest.mark.parametrize("name", list(DEFENCES))
def test_thousands_of_certified_maps_survive_the_exhaustive_adversary(name):
    for q, p, image in CONFIGS:
        certified = certified_maps(name, q, p, image, 400, seed=10)
        assert not any(breaks(name, m, 0, q, p, image) for m in certified), (name, q, p, image)


def reference_certify_masking(local: torch.Tensor, label: int, w: int, threshold: float) -> bool:
    """PatchGuard's ``provable_masking`` (inspire-group/PatchGuard, utils/defense_utils.py), float64: the true
    class's window zeroed, and its largest remaining window subtracted only if it exceeds ``threshold`` of the
    zeroed map's total."""
    z = local.double().clamp(min=0)
    h, ww_, K = z.shape
    g = z.sum((0, 1))
    if int(g.argmax()) != label:
        return False
    pool = lambda m: F.avg_pool2d(m[None, None], w, stride=1, divisor_override=1)[0, 0]   # noqa: E731
    sums = torch.stack([pool(z[..., k]) for k in range(K)], -1)
    for i, j in itertools.product(range(h - w + 1), range(ww_ - w + 1)):
        scores = (g - sums[i, j]) / (1 - threshold)
        kept = z[..., label].clone()
        kept[i:i + w, j:j + w] = 0
        best = float(pool(kept).max())
        scores[label] = g[label] - sums[i, j, label] - (best if best > threshold * float(kept.sum()) else 0.0)
        if int(scores.argmax()) != label:
            return False
    return True


def test_the_adversary_breaks_the_reference_bound_for_masking_with_detection():
    """The adversary has teeth: PatchGuard's own bound (T = 0.2) certifies the issue's counterexample and
    random maps that the adversary breaks; with T = 0 the reference bound is this one and holds."""
    local = torch.zeros(7, 7, 2)
    local[..., 0], local[..., 1] = 1.0, 0.78
    assert reference_certify_masking(local, 0, 2, 0.2) and breaks("masking_detect", local, 0, 9, 8, (64, 64))
    q, p, image = 9, 8, (56, 56)
    maps = [m for m in random_maps(80, grid_of(image, q), seed=3) if masking_predict(m, 2, 0.2) == 0]
    broken = [m for m in maps if reference_certify_masking(m, 0, 2, 0.2) and breaks("masking_detect", m, 0, q, p, image)]
    assert broken and not any(certify_masking(m, 0, 2, 0.2) for m in broken)
    assert all(reference_certify_masking(m, 0, 2, 0.0) == certify_masking(m, 0, 2) for m in maps)


def test_a_window_one_too_small_certifies_maps_the_adversary_breaks():
    """As if window_size were one too small (the certificate's window and the defence's own)."""
    q, p, image = 9, 8, (56, 56)
    w = window_size(p, q)
    for name in ("clipped", "masking", "masking_detect"):
        certify, predict, scorer, threshold = DEFENCES[name]
        masking = None if threshold is None else (w - 1, threshold)
        extra = [m for m in random_maps(60, grid_of(image, q), seed=4) if certify(m, 0, w - 1) and not certify(m, 0, w)]
        assert extra, name
        assert any(find_flip(m, 0, scorer(w - 1), reachable(p, q, image), lambda a: predict(a, w - 1), masking)
                   is not None for m in extra), name


def test_nothing_is_certified_without_a_bounded_clip():
    assert not any(certify_clipping(m, 0, 2, "relu", None) for m in random_maps(20, (N, N)))
