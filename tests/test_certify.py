"""Certificates proven by attack (issue 25): every certified local-logit map survives the strongest attack
at every patch location, certificates exist, and a window one too small certifies maps that an attack breaks."""
from __future__ import annotations

import itertools

import pytest
import torch

from bagnet.certify import (affected, certify_clipping, certify_masking, clipped_predict, masking_predict,
                            window_size, worst_case)

Q, IMAGE, PATCH = 9, 56, 8                 # BagNet-9 on 56 px images: a 6 x 6 map of local logits
N = (IMAGE - Q) // 8 + 1


def maps(n: int = 160, k: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """Local logits with class 0 ahead by margins from none to large (in raw logits, before clipping)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        local = torch.randn(N, N, k, generator=g) * 10
        local[..., 0] += 40 * i / n
        out.append(local)
    return out


# every patch location (pixel top-left inside the image) reaches one of these sets of local logits
REACHED = sorted({affected(y, x, PATCH, Q, N, N) for y, x in itertools.product(range(IMAGE - PATCH + 1), repeat=2)},
                 key=lambda rc: (rc[0].start, rc[0].stop, rc[1].start, rc[1].stop))


def survives(local: torch.Tensor, defend) -> bool:
    """Every patch location and every target class: the defended prediction stays 0."""
    for rows, cols in REACHED:
        for t in range(1, local.shape[-1]):
            if defend(worst_case(local, rows, cols, 0, t)) != 0:
                return False
    return True


def test_window_covers_every_patch_location():
    w = window_size(PATCH, Q)
    assert w == 2
    spans = {tuple(map(len, affected(y, x, PATCH, Q, N, N))) for y in range(IMAGE - PATCH + 1)
             for x in range(IMAGE - PATCH + 1)}
    assert max(max(s) for s in spans) == w                   # some location reaches w rows: w is tight


@pytest.mark.parametrize("kind", ["cbn", "relu"])
def test_certified_clipped_maps_survive_every_attack_and_a_too_small_window_fails(kind):
    c = None if kind == "cbn" else 1.0
    w = window_size(PATCH, Q)
    defend = lambda m: clipped_predict(m, kind, c)   # noqa: E731
    certified = [m for m in maps() if certify_clipping(m, 0, w, kind, c)]
    assert len(certified) >= 10                                # not trivially zero
    assert all(survives(m, defend) for m in certified)
    too_small = [m for m in maps() if certify_clipping(m, 0, w - 1, kind, c) and not certify_clipping(m, 0, w, kind, c)]
    assert too_small and not all(survives(m, defend) for m in too_small)   # the attack breaks them


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_certified_masked_maps_survive_every_attack(threshold):
    w = window_size(PATCH, Q)
    defend = lambda m: masking_predict(m, w, threshold)   # noqa: E731
    certified = [m for m in maps() if certify_masking(m, 0, w, threshold)]
    assert len(certified) >= 10
    assert all(survives(m, defend) for m in certified)
    for m in certified[:20]:                                   # an attacker spreading moderate evidence
        for rows, cols in REACHED:
            for t, v in itertools.product((1, 2), (1.0, 5.0, 20.0)):
                attacked = m.clone()
                attacked[rows.start:rows.stop, cols.start:cols.stop, 0] = -1e4
                attacked[rows.start:rows.stop, cols.start:cols.stop, t] = v
                assert defend(attacked) == 0


def test_nothing_is_certified_without_a_bounded_clip():
    assert not any(certify_clipping(m, 0, 2, "relu", None) for m in maps(20))


def test_patch_robustness_task_on_a_bagnet_certificates_hold_under_pgd():
    from torch.utils.data import TensorDataset
    from bagnet import create_model
    from experiments.patch_robustness import run
    torch.manual_seed(0)
    model = create_model("bagnet9", width=4, num_classes=3).eval()
    model.fc.bias.data = torch.tensor([40.0, 0.0, 0.0])        # class 0 ahead everywhere: certificates exist
    x, y = torch.randn(6, 3, 48, 48), torch.tensor([0, 0, 0, 1, 2, 0])
    result = run({"B9": model}, TensorDataset(x, y), {"device": "cpu", "progress": False, "patch_px": [4, 12],
                                                      "attack_images": 6, "attack_steps": 5, "num_images": None})
    t = result.tables["patch_robustness"].set_index(["patch_px", "defence", "metric"])
    assert t.loc[(4, "clipped", "certified"), "top1"] > 0 and t.loc[(4, "undefended", "certified"), "top1"] == 0
    assert t.loc[(12, "clipped", "certified"), "top1"] <= t.loc[(4, "clipped", "certified"), "top1"]
    assert result.raw["certificate_violations"] == 0
    assert set(t.index.get_level_values("defence")) == {"undefended", "clipped", "masking", "masking_detect"}
