"""Data module: synthetic ground truth, 15-Scene split protocol, ImageNet labels, robust decoding, loaders."""
from __future__ import annotations

import collections
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bagnet.data import DataError, build_data, build_loader
from bagnet.data.loader import EpochSampler
from bagnet.data import synthetic as S
from bagnet.data.folder import ImageListDataset, load_rgb
from bagnet.data.imagenet import imagenet_wnids
from bagnet.data.scene15 import SCENE15_CLASSES, list_scene15, split_scene15
from bagnet.data.transforms import eval_transform

REPO = Path(__file__).resolve().parents[1]


def synth(seed=0, n=6, size=112, **kw):
    return build_data({"name": "synthetic", "root": None, "image_size": size, "samples_per_class": n, **kw}, seed)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_seed_dependent():
    a, b, c = synth(0), synth(0), synth(1)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split).images, b.split(split).images)
        assert not torch.equal(a.split(split).images, c.split(split).images)
    # splits come from different derived streams
    assert not torch.equal(a.train.images[:10], a.test.images[:10])


def test_synthetic_balance_items_and_kinds():
    b = synth(0, n=8)
    assert b.info["sizes"] == {"train": 56, "val": 8 // 4 * 7 if 8 // 4 >= 4 else 28, "test": 28}
    counts = collections.Counter(y for _, y in b.train.samples)
    assert set(counts.values()) == {8} and len(counts) == 7
    x, y = b.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 112, 112) and isinstance(y, int)
    assert collections.Counter(b.info["class_kinds"].values()) == {"local": 3, "mid": 2, "global": 2}
    assert b.info["global_blind_q"] == 33


def _pairs(kind):
    return [c for c in S.SYNTHETIC_CLASSES if c.kind == kind]


def test_pair_classes_have_identical_parts():
    (a, b), (c, d) = _pairs("mid"), _pairs("global")
    assert a.part_multiset == b.part_multiset and a.parts == b.parts[::-1]
    # global: the same three parts in the other cyclic order (not a rotation of it)
    assert c.part_multiset == d.part_multiset and len(c.parts) == 3
    assert all(d.parts != c.parts[k:] + c.parts[:k] for k in range(3))


def _global_placements(geom, cls):
    """Every allowed placement of a global class: {part: (y, x)} for each (y, x, rotation) the renderer can draw."""
    d = geom.global_d
    for y in geom.global_x:
        for x in geom.global_x:
            corners = ((y, x), (y, x + d), (y + d, x))
            for turn in range(3):
                yield {part: corners[(turn + k) % 3] for k, part in enumerate(cls.parts)}


def _global_views(geom, q):
    """Per global class, the multiset over placements of what BagNet-q's windows can know about where each
    part is (its window offsets in y and in x)."""
    size, p = geom.size, 5
    out = []
    for cls in _pairs("global"):
        views = collections.Counter()
        for pos in _global_placements(geom, cls):
            views[tuple((part, S.window_offsets(y, p, size, q), S.window_offsets(x, p, size, q))
                        for part, (y, x) in sorted(pos.items()))] += 1
        out.append(views)
    return out


@pytest.mark.parametrize("size", [112, 128])
def test_global_pair_is_invisible_to_every_bagnet(size):
    geom = S.Geometry.for_size(size)
    p = 5
    assert geom.global_d - p + 2 > 33          # no 33-px window touches two corners
    assert geom.global_d + p <= 61             # small_cnn's receptive field covers two corners
    for q in (9, 17, 33):
        g1, g2 = _global_views(geom, q)
        assert g1 == g2, q                     # same joint view distribution -> chance by construction


def test_global_pair_differs_only_in_arrangement():
    """Each part's position has the same distribution in both classes; the part-to-part displacements differ."""
    geom = S.Geometry.for_size(112)
    marginals, displacements = [], []
    for cls in _pairs("global"):
        where = collections.Counter((part, yx) for pos in _global_placements(geom, cls) for part, yx in pos.items())
        first, second = cls.parts[0], cls.parts[1] if cls.name == "global_cw" else cls.parts[2]  # green -> yellow
        shift = {(pos[second][0] - pos[first][0], pos[second][1] - pos[first][1])
                 for pos in _global_placements(geom, cls)}
        marginals.append(where)
        displacements.append(shift)
    assert marginals[0] == marginals[1]
    assert displacements[0].isdisjoint(displacements[1]) and len(displacements[0]) == 3


def test_scrambling_grid_splits_the_triangle_and_keeps_other_cues_whole():
    geom = S.Geometry.for_size(112)
    tile = lambda y, x: (y >= geom.seam, x >= geom.seam)  # noqa: E731
    rng = np.random.default_rng(0)
    for cls in S.SYNTHETIC_CLASSES:
        for _ in range(20):
            boxes: list = []
            S.render(cls, rng, geom, 12.0, boxes)
            for y0, x0, y1, x1 in boxes:           # no part straddles a seam
                assert tile(y0, x0) == tile(y1 - 1, x1 - 1), (cls.name, boxes)
            if cls.kind == "global":               # three corners, three tiles
                assert len({tile(y0, x0) for y0, x0, _, _ in boxes}) == 3
            if cls.kind == "mid":                  # each red-blue pair inside one tile
                assert all(tile(*a[:2]) == tile(*b[:2]) for a, b in zip(boxes[::2], boxes[1::2]))


def test_mid_pair_is_invisible_to_bagnet9_only():
    size = 112
    geom = S.Geometry.for_size(size)
    p = S._P["dot"].shape[0]
    assert S.MID_DISTANCE - p + 2 > 9 and S.MID_DISTANCE + p <= 17
    views = []
    for cls in _pairs("mid"):
        views.append(collections.Counter(
            tuple(sorted((part, S.window_offsets(x + k * S.MID_DISTANCE, p, size, 9)) for k, part in enumerate(cls.parts)))
            for x in geom.mid_x))
    assert views[0] == views[1]
    phases = collections.Counter(x % 8 for x in geom.mid_x)
    assert len(set(phases.values())) == 1 and len(phases) == 8


def test_small_images_fall_back_to_a_smaller_blind_q():
    assert S.Geometry.for_size(64).global_blind_q == 17
    assert synth(0, n=4, size=64).info["global_blind_q"] == 17


def test_rendered_parts_match_metadata():
    geom = S.Geometry.for_size(112)
    rng = np.random.default_rng(0)
    for cls in _pairs("global") + _pairs("mid"):
        boxes: list = []
        img = S.render(cls, rng, geom, 12.0, boxes)
        for (mask, colour), (y0, x0, y1, x1) in zip(cls.parts * len(boxes), boxes):   # each part painted where recorded
            painted = np.all(np.abs(img[y0:y1, x0:x1] - np.array(colour)) < 1e-3, -1)
            assert np.array_equal(painted, S._P[mask])
        if cls.kind == "mid":                      # on every copy: the order the class name says
            assert all(a[1] < b[1] and a[0] == b[0] for a, b in zip(boxes[::2], boxes[1::2]))
        else:                                      # parts k, k+1, k+2 on clockwise corners (y, x) -> (y, x+d) -> (y+d, x)
            (ya, xa), (yb, xb), (yc, xc) = (b[:2] for b in boxes)
            d = geom.global_d
            turns = {((0, d), (d, -d)), ((d, -d), (-d, 0)), ((-d, 0), (0, d))}
            assert ((yb - ya, xb - xa), (yc - yb, xc - xb)) in turns


# ----------------------------------------------------------------------------- loaders
def test_build_loader_seeded_shuffle_and_eval_order():
    b = synth(0, n=8)
    order = lambda seed: torch.cat([y for _, y in build_loader(b.train, 8, True, seed=seed)])  # noqa: E731
    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    ev = torch.cat([y for _, y in build_loader(b.test, 5, False)])
    assert ev.tolist() == [y for _, y in b.test.samples]         # in order, nothing dropped


def test_eval_shards_cover_each_item_once_and_train_shards_are_equal():
    shards = [EpochSampler(10, 0, shuffle=False, rank=r, world_size=3, pad=False).indices() for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    train = [EpochSampler(10, 0, shuffle=True, rank=r, world_size=3, pad=True).indices() for r in range(3)]
    assert {len(s) for s in train} == {4} and set(sum(train, [])) == set(range(10))


# ----------------------------------------------------------------------------- 15-Scene
def _fake_scene15(root: Path, layout: str, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in SCENE15_CLASSES:
        for i in range(per_class):
            split = "" if layout == "flat" else ("train/" if i < per_class // 2 else "test/")
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 255, (20 + i, 30), dtype=np.uint8)
            Image.fromarray(arr, "L").save(d / f"image_{i:04d}.jpg")


@pytest.mark.parametrize("layout", ["split", "flat"])
def test_scene15_fake_tree(tmp_path, layout):
    _fake_scene15(tmp_path, layout)
    cfg = {"name": "scene15", "root": str(tmp_path), "image_size": 32, "train_per_class": 3,
           "test_per_class": 2}
    b = build_data(cfg, seed=0)
    assert b.classes == SCENE15_CLASSES and b.classes[0] == "bedroom" and b.classes[-1] == "store"
    assert b.info["sizes"] == {"train": 30, "val": 15, "test": 30}
    x, _ = b.train[0]
    assert x.shape == (3, 32, 32)           # grayscale -> 3 channels
    names = [set(p for p, _ in b.split(s).samples) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_scene15_missing_root_is_one_line():
    with pytest.raises(DataError) as e:
        build_data({"name": "scene15", "root": "/nonexistent/scene15", "image_size": 32})
    msg = str(e.value)
    assert "\n" not in msg and "/nonexistent/scene15" in msg and "data.root=" in msg


@pytest.fixture(scope="session")
def scene15_splits(real_data):
    pool, test_pool, _ = list_scene15(real_data("scene15", "train"), 0)
    return {seed: split_scene15(pool, test_pool, seed) for seed in (0, 1)}, pool, test_pool


def test_scene15_real_split_protocol(scene15_splits):
    splits, pool, test_pool = scene15_splits
    train, val, test, dup = splits[0]
    assert (len(train), len(val), len(test)) == (1200, 300, 1200)
    for part, n in ((train, 80), (val, 20), (test, 80)):
        assert set(collections.Counter(y for _, y in part).values()) == {n}
    tr, va, te = ({p for p, _ in s} for s in (train, val, test))
    assert not (tr & va or tr & te or va & te)
    assert tr | va == {p for p, _ in pool} and te <= {p for p, _ in test_pool}
    assert dup["identical_pairs_found"] == 18
    assert dup["test_excluded_count"] > 0 and dup["val_dropped_count"] == 0
    # no byte-identical file on both sides of train | val vs test (the cross-class pair included)
    from bagnet.data.scene15 import file_hash
    assert not ({file_hash(p) for p in tr | va} & {file_hash(p) for p in te})
    assert "test/MITtallbuilding/image_0300.jpg" not in " ".join(te)


def test_scene15_real_split_is_seeded(scene15_splits):
    splits, pool, test_pool = scene15_splits
    again = split_scene15(pool, test_pool, 0)
    assert again[:3] == splits[0][:3]
    assert splits[1][1] != splits[0][1] and splits[1][2] != splits[0][2]


# ----------------------------------------------------------------------------- ImageNet layout
def test_imagenet_wnid_list():
    w = imagenet_wnids()
    assert len(set(w)) == 1000 and list(w) == sorted(w)
    known = {"n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
             "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888257": 701}
    assert {k: w.index(k) for k in known} == known


def test_imagenette_label_spaces(real_data):
    cfg = {"name": "imagenet", "root": str(real_data("imagenette-mini", "val")), "image_size": 32}
    full = build_data({**cfg, "label_space": "imagenet1k"})
    labels = {Path(p).parent.name: y for p, y in full.test.samples}
    assert full.num_classes == 1000 and labels["n01440764"] == 0 and labels["n03888257"] == 701
    compact = build_data({**cfg, "label_space": "compact", "val_from_train": 0.2})
    assert compact.num_classes == 10 and sorted({y for _, y in compact.test.samples}) == list(range(10))
    assert compact.info["sizes"]["train"] + compact.info["sizes"]["val"] == 600


def test_imagenet_flat_val_is_rejected(tmp_path):
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="prepare_imagenet_val"):
        build_data({"name": "imagenet", "root": str(tmp_path), "image_size": 32})


# ----------------------------------------------------------------------------- decoding
def _odd_images(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(files.setdefault("cmyk", d / "cmyk.jpg"))  # red
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)                                         # index 1 = blue
    pal.save(files.setdefault("palette", d / "palette.png"))
    Image.fromarray(np.full((16, 16), 65535 // 2, np.uint16)).save(files.setdefault("i16", d / "i16.png"))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 200, 0)).save(buf, "JPEG")
    files.setdefault("truncated", d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files.setdefault("garbage", d / "garbage.jpg").write_bytes(b"not an image at all")
    Image.new("L", (16, 16), 200).save(files.setdefault("gray", d / "gray.jpg"))
    return files


def test_odd_modes_load_as_rgb8(tmp_path):
    f = _odd_images(tmp_path)
    cmyk, pal, i16, gray = (np.asarray(load_rgb(f[k])) for k in ("cmyk", "palette", "i16", "gray"))
    for a in (cmyk, pal, i16, gray):
        assert a.dtype == np.uint8 and a.shape == (16, 16, 3)
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1:].max() < 60
    assert tuple(pal[0, 0]) == (0, 0, 255)
    assert abs(int(i16[0, 0, 0]) - 127) <= 1 and len(set(i16[0, 0])) == 1   # scaled, not clipped to 255
    for k in ("truncated", "garbage"):
        with pytest.raises(Exception):
            load_rgb(f[k])


def test_bad_images_are_skipped_and_counted(tmp_path, caplog, run_in_process, make_image_folder, folder_args):
    """Skipped with a warning naming the file (training: the next good image; evaluation: a mean-colour image
    with the true label), counted across loader workers, and the counts reach a run's summary.json."""
    f = _odd_images(tmp_path / "odd")
    order = ["gray", "truncated", "cmyk", "garbage"]
    samples = [(str(f[k]), i) for i, k in enumerate(order)]
    tf = eval_transform(16)
    train = ImageListDataset(samples, ["a", "b", "c", "d"], tf, train=True)
    with caplog.at_level("WARNING"):
        labels = [y for _, y in build_loader(train, 4, train=False)][0].tolist()
    assert labels == [0, 2, 2, 0] and train.bad_images == 2       # replaced by the next good image
    assert "skipping undecodable image" in caplog.text and "truncated.jpg" in caplog.text
    ev = ImageListDataset(samples, ["a", "b", "c", "d"], tf, train=False)
    x, y = ev[1]
    assert y == 1 and x.shape == (3, 16, 16) and x.abs().max() < 0.05   # mean colour, true label
    # counted across worker processes too
    ev2 = ImageListDataset(samples, ["a", "b", "c", "d"], tf, train=False)
    list(build_loader(ev2, 2, train=False, workers=2))
    assert ev2.bad_images == 2
    strict = ImageListDataset(samples, ["a", "b", "c", "d"], tf, train=True, on_bad_image="error")
    with pytest.raises(RuntimeError, match="truncated"):
        strict[1]
    # a training run: its summary counts the skipped images of every split
    root = make_image_folder(tmp_path / "data", n=4, bad={"train": 2, "val": 1})
    cfg, _ = run_in_process(*folder_args(root, "trainer.max_steps_per_epoch=null", "trainer.batch_size=20"))
    summary = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert summary["bad_images"]["train"] >= 2 and summary["bad_images"]["val"] >= 1, summary["bad_images"]


def test_empty_class_folder_and_imagefolder_holdout(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    b = build_data({"name": "imagefolder", "root": str(tmp_path), "image_size": 16}, seed=0)
    assert b.info["sizes"] == {"train": 8, "val": 2, "test": 2} and "test = val" in b.info["test"]
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        build_data({"name": "imagefolder", "root": str(tmp_path), "image_size": 16})


# ----------------------------------------------------------------------------- scripts
def test_get_scene15_from_local_zip(tmp_path):
    src = tmp_path / "src"
    _fake_scene15(src / "scene_categories", "flat", per_class=2)
    archive = tmp_path / "scene_categories.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted((src).rglob("*.jpg")):
            z.write(p, p.relative_to(src))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "scripts/get_scene15.py"), str(archive), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SCENE15_CLASSES)
    assert len(list(out.rglob("*.jpg"))) == 30
    bad = subprocess.run([sys.executable, str(REPO / "scripts/get_scene15.py"), "https://invalid.invalid/x.zip",
                          "--out", str(tmp_path / "o2")], capture_output=True, text=True)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow   # 10 s of subprocesses: make test-slow / test-full (CI runs both); keeps make test under 4 min
def test_get_imagenette_from_a_local_archive(tmp_path):
    """The published md5 is checked (a small local archive is refused against it, accepted with its own md5), the
    archive's imagenette2/train|val/<wnid>/ land in --out/train|val/<wnid>/, and a failed download is one line."""
    import hashlib
    import runpy
    import tarfile
    script = runpy.run_path(str(REPO / "scripts/get_imagenette.py"))
    src = tmp_path / "src" / "imagenette2"
    for split in ("train", "val"):
        for w in script["WNIDS"]:
            (src / split / w).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(src / split / w / f"{split}_{w}.JPEG")
    archive = tmp_path / "imagenette2.tgz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname="imagenette2")
    cmd = [sys.executable, str(REPO / "scripts/get_imagenette.py"), str(archive), "--out", str(tmp_path / "out")]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2 and "md5 mismatch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    ok = subprocess.run([*cmd, "--md5", digest], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "val").iterdir()) == script["WNIDS"]
    assert len(list((tmp_path / "out").rglob("*.JPEG"))) == 20 and "10 train and 10 val" in ok.stdout
    build_data({"name": "imagenette", "root": str(tmp_path / "out"), "image_size": 8, "label_space": "compact"})
    with pytest.raises(script["Fail"], match="cannot download"):
        script["download"]("https://invalid.invalid/imagenette2.tgz", tmp_path / "src")


def test_prepare_imagenet_val(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in (1, 2):
        Image.new("RGB", (8, 8)).save(val / f"ILSVRC2012_val_0000000{i}.JPEG")
    labels = tmp_path / "val_labels.txt"
    labels.write_text("ILSVRC2012_val_00000001.JPEG n01440764\nILSVRC2012_val_00000002.JPEG n03888257\n")
    script = str(REPO / "scripts/prepare_imagenet_val.py")
    dry = subprocess.run([sys.executable, script, str(val), "--labels", str(labels), "--dry-run"],
                         capture_output=True, text=True)
    assert dry.returncode == 0 and not (val / "n01440764").exists()
    r = subprocess.run([sys.executable, script, str(val), "--labels", str(labels)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (val / "n01440764" / "ILSVRC2012_val_00000001.JPEG").is_file()
    b = build_data({"name": "imagenet", "root": str(tmp_path), "image_size": 8})
    assert sorted(y for _, y in b.test.samples) == [0, 701]
