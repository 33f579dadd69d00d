"""Issue 37: the experiment layer keeps the promises training keeps (README "Guarantees").

Every key of every registered experiment has a range, declared beside it in its ``Config`` and checked before any
model is loaded (the bounds on the image side once the data are known); a value outside it is one line naming
``experiments.<experiment>.<key>``. Bad image files, run names, seeds and folders end in one line and leave nothing
behind; a long strip of an image is explained at a bounded size; ``data=imagenette`` holds wnid folders only.
Each test failed before its fix.
"""
from __future__ import annotations

import dataclasses
import os
import struct
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bagnet.data import DataError, build_data
from bagnet.errors import ConfigError, UserError


def nothing_written(tmp_path: Path, *besides: str) -> None:
    left = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                  if not any(p.relative_to(tmp_path).parts[0] == b for b in besides))
    assert not left, left


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is refused must be refused before any model is loaded."""
    from bagnet.context import Context

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the config was refused")
    monkeypatch.setattr(Context, "model", refuse)


# ---------------------------------------------------------------- item 7: every key has a range
def _numeric(t) -> bool:
    if t in (int, float):
        return True
    return any(_numeric(a) for a in typing.get_args(t) if a is not type(None))


def _without_range(schema: type, where: str) -> list[str]:
    hints, out = typing.get_type_hints(schema), []
    for f in dataclasses.fields(schema):
        rule = f.metadata.get("range")
        if dataclasses.is_dataclass(hints[f.name]):
            out += _without_range(hints[f.name], f"{where}.{f.name}")
        elif _numeric(hints[f.name]) and (rule is None or not rule.bounds(image_size=64)):
            out.append(f"{where}.{f.name}")
    return out


def test_every_numeric_experiment_key_declares_a_range():
    """Every registered experiment's: a new key cannot be added without its range."""
    from experiments import registry
    missing = [k for name, exp in registry.registered().items() for k in _without_range(exp.schema, f"experiments.{name}")]
    assert not missing, f"keys without a range (declare one with experiments.keys.ranged): {missing}"


@pytest.mark.parametrize("task, setting, key", [
    # item 7: silent wrong results
    ("patch_robustness", "patch_px=[-4]", "patch_px"),
    ("patch_robustness", "patch_px=[0]", "patch_px"),
    ("patch_robustness", "patch_px=[200]", "patch_px"),           # the images are 64 px
    ("patch_robustness", "patch_px=[64]", "patch_px"),
    ("patch_robustness", "patch_share=[5.0]", "patch_share"),
    ("patch_robustness", "patch_share=[0.99]", "patch_share"),    # rounds to the whole image
    ("patches", "per_class_images=0", "per_class_images"),
    ("patches", "per_class_images=-1", "per_class_images"),
    ("scrambling", "num_images=-1", "num_images"),
    ("sensitivity", "region=0", "region"),
    ("heatmaps", "images=[]", "images"),
    ("precision", "modes=[fp8]", "modes"),
    ("precision", "modes=[fp16,tf32]", "modes"),                  # neither runs on a CPU
    # item 8: tracebacks
    ("sensitivity", "region=100", "region"),
    ("sensitivity", "region=-8", "region"),
    ("sensitivity", "max_regions=0", "max_regions"),
    ("sensitivity", "num_images=0", "num_images"),
    ("scrambling", "grids=[0]", "grids"),
], ids=lambda v: v if isinstance(v, str) and "=" in v else None)
def test_experiment_keys_out_of_range_are_refused_before_any_work(tmp_path, no_model, task, setting, key,
                                                                  run_in_process, tiny_overrides):
    with pytest.raises(ConfigError) as e:
        run_in_process(*tiny_overrides, f"task={task}", f"experiments.{task}.{setting}")
    msg = str(e.value)
    assert msg.startswith(f"experiments.{task}.{key}:") and "\n" not in msg, msg
    nothing_written(tmp_path)


def test_a_pipeline_refuses_a_key_out_of_range_before_training(tmp_path, run_in_process, tiny_overrides):
    with pytest.raises(ConfigError, match=r"^experiments\.sensitivity\.region: must be >= 1 and <= 64 \(the image "):
        run_in_process(*tiny_overrides, "task=pipeline", "+pipeline.train.A=bagnet9",
                       "pipeline.experiments=[sensitivity]", "experiments.sensitivity.region=100")
    nothing_written(tmp_path)


def test_ranges_hold_at_their_bounds():
    from experiments import registry, sensitivity
    ok = {"patch_robustness": {"patch_px": [1, 63], "patch_share": [0.5]}, "sensitivity": {"region": 64},
          "scrambling": {"grids": [2, 64]}, "precision": {"modes": ["fp32", "fp16"]}}
    for name, cfg in ok.items():
        registry.check(name, {**cfg, "device": "cpu"}, [], 64)
    with pytest.raises(ConfigError, match=r"experiments\.scrambling\.grids: must be >= 2 and <= 64"):
        registry.check("scrambling", {"grids": [65]}, [], 64)
    with pytest.raises(ConfigError, match=r"experiments\.additivity\.distance_bins: .*strictly increasing"):
        registry.check("additivity", {"distance_bins": [8, 4]}, [], 64)
    with pytest.raises(ConfigError, match=r"experiments\.sensitivity\.num_images: must be >= 1, got 0"):
        sensitivity.run({}, None, {"num_images": 0})   # the library's own entry point refuses too


# ---------------------------------------------------------------- item 8: one line, nothing left behind
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG file that claims ``width`` x ``height`` pixels (and holds none)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def bad_image(tmp_path: Path, kind: str) -> Path:
    if kind == "text":
        path = tmp_path / "notes.jpg"
        path.write_text("not an image\n")
    elif kind == "truncated":
        path = tmp_path / "cut.jpg"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path = _png_header(tmp_path / "huge.png", 20000, 20000)   # beyond PIL's decompression-bomb limit
    return path


@pytest.mark.parametrize("kind", ["text", "truncated", "bomb"])
def test_bad_image_files_given_to_heatmaps_end_in_one_line(tmp_path, kind, run_in_process, tiny_overrides):
    (tmp_path / "mine").mkdir()
    path = bad_image(tmp_path / "mine", kind)
    with pytest.raises(ConfigError) as e:
        run_in_process(*tiny_overrides, "task=heatmaps", f"experiments.heatmaps.images={path}")
    msg = str(e.value)
    assert msg.startswith("experiments.heatmaps.images: ") and str(path) in msg and "\n" not in msg, msg
    nothing_written(tmp_path, "mine")


def test_a_bad_image_file_is_one_error_line_with_exit_code_2(tmp_path, run_cli, tiny_overrides, one_error_line):
    path = bad_image(tmp_path, "bomb")
    r = run_cli(*tiny_overrides, "task=heatmaps", f"experiments.heatmaps.images={path}", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert str(path) in one_error_line(r.stderr)
    nothing_written(tmp_path, "huge.png")


@pytest.mark.parametrize("bad, key", [
    (["seed=9223372036854775808"], "seed"),                      # 2^63
    (["run_name=" + "x" * 300], "run_name"),
], ids=["seed-2^63", "run_name-300"])
def test_run_dirs_that_cannot_be_made_are_refused_before_anything_is_created(tmp_path, bad, key, run_in_process,
                                                                             tiny_overrides):
    with pytest.raises(ConfigError) as e:
        run_in_process(*tiny_overrides, *bad)
    assert str(e.value).startswith(f"{key}:") and "\n" not in str(e.value)
    nothing_written(tmp_path)


def test_a_run_name_with_control_characters_is_refused(tmp_path, run_in_process, tiny_overrides):
    def named(cfg):
        cfg.run_name = "seed0\x1b[2J\x07"
    with pytest.raises(ConfigError, match=r"^run_name: .*control characters"):
        run_in_process(*tiny_overrides, edit=named)
    nothing_written(tmp_path)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A read-only folder (also for root, whom permission bits do not stop: ``os.access`` says so for it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: (not (mode & os.W_OK and Path(p).absolute()
                                                                   .is_relative_to(ro))) and real(p, mode, **k))
    yield ro
    ro.chmod(0o755)


def test_a_read_only_runs_dir_is_refused_before_anything_is_created(tmp_path, read_only, run_in_process,
                                                                    tiny_overrides):
    with pytest.raises(ConfigError, match=rf"^run_dir: cannot write {read_only}/.*read-only; set paths\.runs_dir"):
        run_in_process(*tiny_overrides, f"paths.runs_dir={read_only}")
    assert not any(read_only.iterdir())
    nothing_written(tmp_path, "ro")


def test_a_read_only_results_dir_is_refused_before_the_experiment_runs(tmp_path, read_only, no_model, run_in_process,
                                                                       tiny_overrides):
    with pytest.raises(ConfigError, match=rf"^out_dir: cannot write {read_only}/.*read-only"):
        run_in_process(*tiny_overrides, "task=heatmaps", f"paths.runs_dir={read_only}")
    assert not any(read_only.iterdir())


def test_a_large_seed_trains(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides, "seed=10000000")   # its per-sample seeds overflowed torch's 64-bit seed
    assert (Path(cfg.run_dir) / "summary.json").is_file()


# ---------------------------------------------------------------- item 10: bounded sizes, wnid folders
def test_a_long_strip_is_explained_at_a_bounded_size(tmp_path, run_in_process, tiny_overrides):
    from experiments.explain import MAX_ASPECT, load_image
    mean = std = (0.5, 0.5, 0.5)
    strip, wide = tmp_path / "mine" / "strip.png", tmp_path / "mine" / "wide.png"
    strip.parent.mkdir()
    Image.new("RGB", (2000, 4), (200, 30, 30)).save(strip)
    Image.new("RGB", (150, 50), (30, 200, 30)).save(wide)
    assert max(load_image(strip, 64, mean, std).shape[1:]) <= MAX_ASPECT * 64     # was 64 x 32000
    assert tuple(load_image(wide, 64, mean, std).shape[1:]) == (64, 192)          # within the cap: short side 64
    with pytest.raises(ConfigError, match=f"{strip}: .* smaller than"):           # 1 x 256 px: below a patch
        run_in_process(*tiny_overrides, "task=heatmaps", f"experiments.heatmaps.images={strip}")
    nothing_written(tmp_path, "mine")


def test_imagenette_refuses_folders_that_are_not_wnids(tmp_path, compose_config):
    root = tmp_path / "nette"
    for split in ("train", "val"):
        for c in ("n01440764", "cats"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(root / split / c / f"{i}.png")
    for space in ("compact", "imagenet1k"):
        cfg = compose_config("data=imagenette", f"data.root={root}", f"data.label_space={space}")
        with pytest.raises(DataError, match=rf"the folder {root / 'val' / 'cats'} is not an ILSVRC2012 wnid") as e:
            build_data(cfg.data, seed=0)
        assert "\n" not in str(e.value) and isinstance(e.value, UserError)
