"""PatchCleanser (bagnet/patchcleanser.py, issue 35): the paper's mask set covers every patch location and
is tight; double masking decides as the paper's Algorithm 1; a certificate survives every adversary that owns
the two-mask predictions a patch can reach (exhaustively, every labelling, for 4 masks; sampled and
structured ones for 9), a mask set one pixel too narrow does not; in pixel space the patch never reaches a
masked image that hides it, and certified images keep their label under patches at every location."""
from __future__ import annotations

import itertools

import pytest
import torch

from bagnet import create_model
from bagnet.patchcleanser import MaskSet, axis_masks, certify, double_masking, mask_set, prediction_maps


def test_mask_set_is_the_papers_construction():
    """Stride ceil((n - p + 1) / k), width p + s - 1, starts 0, s, 2s, ... and one flush with the edge (the
    reference's gen_mask_set with num_mask = k), worked by hand."""
    assert axis_masks(224, 32, 6) == (64, 33, (0, 33, 66, 99, 132, 160))      # ImageNet, 2% patch, k = 6
    assert axis_masks(112, 16, 6) == (32, 17, (0, 17, 34, 51, 68, 80))
    assert axis_masks(10, 3, 4) == (4, 2, (0, 2, 4, 6))                        # the stride lands on the edge
    assert axis_masks(12, 3, 4) == (5, 3, (0, 3, 6, 7))
    assert axis_masks(8, 8, 3) == (8, 1, (0,))                                 # the patch is the image
    masks = mask_set((96, 160), 16, 6)
    assert masks.stride == (14, 25) and masks.size == (29, 40)                # per axis: 81 / 6 and 145 / 6 up
    assert masks.rows == (0, 14, 28, 42, 56, 67) and masks.cols == (0, 25, 50, 75, 100, 120)
    assert len(masks) == 36 and len(masks.pairs) == 36 * 37 // 2
    with pytest.raises(ValueError):
        mask_set((32, 32), 40, 6)


@pytest.mark.parametrize("image,p,k", [((32, 32), 5, 2), ((32, 48), 8, 3), ((56, 40), 7, 6), ((30, 30), 30, 2),
                                       ((64, 64), 9, 4), ((21, 13), 4, 5)])
def test_every_patch_location_lies_inside_a_mask_and_the_width_is_tight(image, p, k):
    masks = mask_set(image, p, k)
    H, W = image
    assert all(masks.covering(y, x) for y in range(H - p + 1) for x in range(W - p + 1))
    hidden = masks.masks()
    assert hidden.shape == (len(masks), H, W) and int(hidden[0].sum()) == masks.size[0] * masks.size[1]
    if masks.size[0] < H:           # one pixel narrower on an axis: some patch location escapes every mask
        narrower = MaskSet(masks.image, p, (masks.size[0] - 1, masks.size[1]), masks.stride, masks.rows, masks.cols)
        assert not all(narrower.covering(y, x) for y in range(H - p + 1) for x in range(W - p + 1))


def test_double_masking_decides_as_algorithm_1():
    y, t, u = 2, 0, 1
    agreed = torch.full((4, 4), y)
    assert double_masking(agreed) == y                                         # Case I: unanimous
    one = agreed.clone()
    one[1, :], one[:, 1] = t, t                                                # mask 1 votes t, and so do its pairs
    assert double_masking(one) == t                                            # Case II: the disagreer wins
    one[1, 3] = one[3, 1] = y
    assert double_masking(one) == y                                            # Case III: it loses, the majority
    tie = torch.tensor([[t, t, t, t], [t, t, t, t], [t, t, u, u], [t, t, u, u]])
    assert double_masking(tie) == t                       # 2 votes each: majority t (lowest); u's pairs disagree
    assert double_masking(torch.tensor([[u, u], [u, t]])) == u     # 1 vote each: majority t, then u agrees: u
    assert certify(agreed, y, mask_set((8, 8), 2, 2)) and not certify(one, y, mask_set((8, 8), 2, 2))
    whole = mask_set((8, 8), 8, 2)
    assert whole.covers_image and not certify(torch.full((1, 1), y), y, whole)   # a mask hiding everything


def attacked_maps(clean: torch.Tensor, covering: list[int], labels: list[int], every: bool, samples: int = 0,
                  seed: int = 0):
    """Two-mask prediction maps an attacker can produce: the entries of pairs that involve a covering mask are
    the clean ones (that image hides the patch); every other unordered pair takes any label, symmetrically.
    ``every``: all labellings; else the structured ones (all one label; diagonal one label, the rest another)
    and ``samples`` random ones."""
    K = clean.shape[0]
    free = [(i, j) for i in range(K) for j in range(i, K) if i not in covering and j not in covering]
    if every:
        choices = itertools.product(labels, repeat=len(free))
    else:
        g = torch.Generator().manual_seed(seed)
        structured = [[a if i == j else b for i, j in free] for a in labels for b in labels]
        rand = torch.tensor(labels)[torch.randint(len(labels), (samples, len(free)), generator=g)].tolist()
        choices = itertools.chain(structured, rand)
    for choice in choices:
        m = clean.clone()
        for (i, j), label in zip(free, choice):
            m[i, j] = m[j, i] = label
        yield m


@pytest.mark.parametrize("image,p,k,every", [((20, 28), 5, 2, True), ((24, 24), 6, 3, False)])
def test_certified_maps_survive_every_attacker_at_every_patch_location(image, p, k, every):
    """4 masks: every labelling of the pairs the patch can reach (3 labels, up to 3^6 maps), at every patch
    location; 9 masks: structured and 300 random labellings per location. A certified map always keeps its
    label; a map one two-mask prediction short of certified, or a mask set one pixel too narrow, does not."""
    masks = mask_set(image, p, k)
    K, y, labels = len(masks), 1, [0, 1, 2]
    clean = torch.full((K, K), y)
    assert certify(clean, y, masks)
    coverings = {tuple(masks.covering(yy, xx)) for yy in range(image[0] - p + 1) for xx in range(image[1] - p + 1)}
    for covering in coverings:
        assert all(double_masking(m) == y for m in attacked_maps(clean, list(covering), labels, every, samples=300))
    almost = clean.clone()
    almost[0, K - 1] = almost[K - 1, 0] = 0                  # not certified: the pair (first, last mask) says 0
    assert not certify(almost, y, masks)
    assert any(double_masking(m) != y for cov in coverings for m in attacked_maps(almost, list(cov), labels, every,
                                                                                 samples=50))
    narrower = MaskSet(masks.image, p, (masks.size[0] - 1, masks.size[1]), masks.stride, masks.rows, masks.cols)
    assert not all(narrower.covering(yy, xx) for yy in range(image[0] - p + 1) for xx in range(image[1] - p + 1))
    assert any(double_masking(m) != y for m in attacked_maps(clean, [], labels, False))   # no mask hides it


def test_in_pixel_space_a_hidden_patch_changes_nothing_and_certified_images_keep_their_label():
    """A small CNN on 24 px images: at every patch location, random patch contents leave every masked image
    that involves a covering mask bitwise unchanged, and double masking on the patched image keeps each
    certified image's label."""
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4, stages=3, num_classes=3).eval()
    model.fc.bias.data = torch.tensor([0.0, 3.0, 0.0])
    image_hw, p = (24, 24), 5
    masks = mask_set(image_hw, p, 2)
    hidden = masks.masks()
    images = torch.randn(4, 3, *image_hw, generator=torch.Generator().manual_seed(1))
    clean = prediction_maps(model, images, masks)
    labels = [double_masking(m) for m in clean]
    certified = [b for b in range(len(images)) if certify(clean[b], labels[b], masks)]
    assert certified
    g = torch.Generator().manual_seed(2)
    corners = list(itertools.product(range(image_hw[0] - p + 1), repeat=2))
    for b in certified:
        patched = images[b].repeat(len(corners), 1, 1, 1)
        for n, (yy, xx) in enumerate(corners):
            patched[n, :, yy:yy + p, xx:xx + p] = torch.randn(3, p, p, generator=g) * 5
            for c in masks.covering(yy, xx):
                for j in range(len(masks)):
                    keep = hidden[c] | hidden[j]
                    assert torch.equal(torch.where(keep, 0.0, patched[n]), torch.where(keep, 0.0, images[b]))
        maps = prediction_maps(model, patched, masks)
        assert all(double_masking(m) == labels[b] for m in maps)


@pytest.mark.parametrize("bias", [0.0, 1.5, 3.0])
def test_answer_maps_give_the_full_maps_answers_for_fewer_forwards(bias):
    """The lazy maps (first round, disagreers' rows, a unanimous correct image's pairs up to its first wrong one)
    give every image the prediction and the certificate of the full map, at every label (right or wrong), on
    models from undecided (bias 0: many disagreers) to nearly constant (bias 3: many certified), and a batch size
    that splits the work unevenly."""
    from bagnet.patchcleanser import answer_maps
    torch.manual_seed(0)
    model = create_model("small_cnn", width=4, stages=3, num_classes=3).eval()
    model.fc.bias.data = torch.tensor([0.0, bias, 0.0])
    masks = mask_set((24, 24), 5, 3)
    images = torch.randn(12, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    full = prediction_maps(model, images, masks)
    for labels in ([double_masking(m) for m in full], [b % 3 for b in range(len(images))]):
        lazy, forwards = answer_maps(model, images, labels, masks, batch_size=37)
        for b, y in enumerate(labels):
            assert double_masking(lazy[b]) == double_masking(full[b])
            assert certify(lazy[b], y, masks) == certify(full[b], y, masks)
        known = lazy != -1
        assert torch.equal(lazy[known], full[known]) and forwards == int(known.triu().sum())
        certified = sum(certify(full[b], y, masks) for b, y in enumerate(labels))
        assert forwards <= len(images) * len(masks.pairs)
        if certified < len(images):
            assert forwards < len(images) * len(masks.pairs)


class BrightSquare(torch.nn.Module):
    """Class 0 when any pixel of the 5 x 5 square at (6, 6) is visible, class 1 when masks hide it all: on an image
    lit only there, the masks that cover the square disagree with the majority and win (the paper's recovery)."""

    def forward(self, x):
        seen = x[:, :, 6:11, 6:11].abs().amax((1, 2, 3))
        return torch.stack([seen - 0.5, 0.5 - seen, torch.full_like(seen, -1.0)], -1)


def test_answer_maps_read_the_rows_of_a_disagreer_that_wins():
    from bagnet.patchcleanser import answer_maps
    masks = mask_set((24, 24), 5, 3)
    images = torch.zeros(2, 3, 24, 24)
    images[0, :, 6:11, 6:11] = 1.0                     # lit square: a disagreer wins -> class 1; image 1: all 1
    full = prediction_maps(BrightSquare(), images, masks)
    assert [double_masking(m) for m in full] == [1, 1]
    lazy, forwards = answer_maps(BrightSquare(), images, [1, 1], masks, batch_size=16)
    assert [double_masking(m) for m in lazy] == [1, 1]
    assert [certify(m, 1, masks) for m in lazy] == [certify(m, 1, masks) for m in full] == [False, True]
    assert forwards < 2 * len(masks.pairs)


def test_patchcleanser_and_pgd_images_are_sampled_across_a_dataset_stored_class_by_class():
    """15-Scene's test split is stored class by class: the first 16 images were all one class (the 15-Scene run
    that found it certified PatchCleanser on bedrooms only). The subsets are seeded samples of every class."""
    from torch.utils.data import TensorDataset
    from experiments.patch_robustness import run
    model = create_model("small_cnn", width=4, stages=3, num_classes=4).eval()
    labels = torch.arange(4).repeat_interleave(10)                          # 0 x 10, 1 x 10, ...
    cfg = {"device": "cpu", "progress": False, "patch_px": [6], "cleanser_masks": 2, "cleanser_images": 8,
           "attack_images": 0, "num_images": None, "defences": ["undefended", "patchcleanser"]}
    rows = run({"CNN": model}, TensorDataset(torch.randn(40, 3, 24, 24), labels), cfg).tables["per_image"]
    cleansed = rows.dropna(subset=["patchcleanser_clean"])
    assert len(cleansed) == 8 and cleansed["label"].nunique() >= 3
    again = run({"CNN": model}, TensorDataset(torch.randn(40, 3, 24, 24), labels), cfg).tables["per_image"]
    assert list(again.dropna(subset=["patchcleanser_clean"])["index"]) == list(cleansed["index"])    # seeded
