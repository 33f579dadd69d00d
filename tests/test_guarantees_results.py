"""The experiment layer's guarantees (README "Guarantees"): results folders and stored units, attacked the way
they could fail: a user's own files in out_dir, a write that fails or is killed midway, a unit of older code,
a unit killed between its files, a damaged unit file, names that collide, sweeps over any key."""
from __future__ import annotations

import errno
import json
import subprocess
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch

from bagnet import io
from bagnet.errors import ConfigError, LockError, UserError
from bagnet.provenance import git_commit
from bagnet.result import Result
from experiments import suite

matplotlib.use("Agg")
SCRAMBLE = ["task=scrambling", "model=bagnet9", "experiments.scrambling.num_images=4", "experiments.scrambling.grids=[2]",
            "experiments.scrambling.texture=false", "experiments.scrambling.num_examples=1"]


def result(value: float, figures=("f",)) -> Result:
    import matplotlib.pyplot as plt
    figs = {}
    for name in figures:
        figs[name] = plt.figure()
    return Result(tables={"t": pd.DataFrame({"v": [value]})}, figures=figs, raw={"v": value}, summary=str(value))


def written(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. the user's own files
def test_an_out_dir_with_files_the_suite_did_not_write_is_refused(tmp_path, run_in_process, tiny_overrides):
    """A folder holding the user's accuracy.csv and README.md is refused before anything runs, whatever
    overwrite says, and its files are untouched; a file added to a results folder the suite wrote is refused
    too, while the suite's own files are replaced by a rerun."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "accuracy.csv").write_text("my numbers\n")
    (out / "README.md").write_text("my notes\n")
    before = written(out)
    for extra in ([], ["overwrite=true"]):
        with pytest.raises(ConfigError, match="holds files this suite did not write.*README.md") as e:
            run_in_process(*tiny_overrides, *SCRAMBLE, f"out_dir={out}", *extra)
        assert "\n" not in str(e.value)
    assert written(out) == before and not (tmp_path / "runs").exists()     # refused before any work

    suite_out = tmp_path / "scr"
    run_in_process(*tiny_overrides, *SCRAMBLE, f"out_dir={suite_out}")
    assert (suite_out / io.MANIFEST).is_file() and io.foreign_files(suite_out) == []
    run_in_process(*tiny_overrides, *SCRAMBLE, f"out_dir={suite_out}")              # the suite's own: replaced
    (suite_out / "notes.txt").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"did not write \(notes.txt\)"):
        run_in_process(*tiny_overrides, *SCRAMBLE, f"out_dir={suite_out}")
    assert (suite_out / "notes.txt").read_text() == "mine\n"


def test_an_out_dir_that_is_a_file_is_refused_before_running(tmp_path, run_cli, tiny_overrides, one_error_line):
    target = tmp_path / "a_file"
    target.write_text("x")
    r = run_cli(*tiny_overrides, *SCRAMBLE, f"out_dir={target}", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2 and "is a file, not a folder" in one_error_line(r.stderr)
    assert not (tmp_path / "runs").exists() and target.read_text() == "x"


# ---------------------------------------------------------------- 4. torn results folders
def test_a_write_that_fails_midway_leaves_the_previous_result_whole(tmp_path, monkeypatch):
    """Disk full while the new result is written: the old result is there, byte for byte, with nothing of
    the new one and no staging folder left behind."""
    out = tmp_path / "out"
    io.write_result(result(1.0, figures=("a", "b")), out, {"config": {}})
    before = written(out)
    real = io.write_figure
    calls = []

    def full_disk(fig, stem, *a, **k):
        calls.append(stem)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fig, stem, *a, **k)
    monkeypatch.setattr(io, "write_figure", full_disk)
    with pytest.raises(OSError, match="No space"):
        io.write_result(result(2.0, figures=("a", "b")), out, {"config": {}})
    assert written(out) == before and not list(out.glob(io.STAGING + "*"))
    assert io.read_result(out / "raw.json")["raw"] == {"v": 1.0}


def test_a_write_killed_while_moving_files_is_finished_by_the_next_writer(tmp_path, monkeypatch):
    """Killed after the journal and some of the moves: readers refuse the folder in one line (never old and
    new numbers side by side), and the next writer completes the new result first; files the old result had
    and the new one does not are removed."""
    out = tmp_path / "out"
    io.write_result(result(1.0, figures=("a", "old_only")), out, {"config": {}})
    real, moved = io.os.replace, []

    def killed(src, dst):                # the moves out of the staging folder (not its files' own temp renames)
        if ".staging-" in str(src) and not str(src).endswith(io.TEMP_SUFFIX):
            if len(moved) == 2:
                raise KeyboardInterrupt
            moved.append(dst)
        return real(src, dst)
    monkeypatch.setattr(io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write_result(result(2.0, figures=("a",)), out, {"config": {}})
    monkeypatch.setattr(io.os, "replace", real)
    assert (out / io.JOURNAL).exists()
    with pytest.raises(UserError, match="did not finish"):
        io.read_result(out / "raw.json")
    note = io.recover_results_dir(out)
    assert "finished replacing" in note and not (out / io.JOURNAL).exists()
    assert io.read_result(out / "raw.json")["raw"] == {"v": 2.0}
    assert not (out / "old_only.png").exists() and (out / "a.png").exists()
    assert sorted(io.manifest(out)) == sorted(written(out).keys() - {io.MANIFEST})


# ---------------------------------------------------------------- 5. names that collide
def test_figure_and_table_names_keep_their_dots_and_cannot_collide(tmp_path):
    out = tmp_path / "out"
    names = ("img.000", "img.001", "x.png", "x.jpg")
    io.write_result(Result(tables={"a.1": pd.DataFrame({"v": [1]}), "a.2": pd.DataFrame({"v": [2]})},
                           figures=result(0, figures=names).figures), out, {})
    assert {f"{n}.png" for n in names} | {"a.1.csv", "a.2.csv"} <= set(written(out))
    assert io.safe_name("cat/1") != io.safe_name("cat.1") and "/" not in io.safe_name("a/../b")


def test_heatmaps_give_one_figure_per_input_file(tmp_path, run_in_process, tiny_overrides):
    """Dotted names and one stem with two extensions: one figure each (Path.with_suffix made one of four)."""
    import numpy as np
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("img.000.png", "img.001.png", "x.png", "x.jpg"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    cfg, res = run_in_process(*tiny_overrides, "task=heatmaps", f"experiments.heatmaps.images={folder}")
    per_model = [n for n in res.figures]
    assert len(per_model) == 4 and len(set(per_model)) == 4
    assert len(list(Path(cfg.out_dir).glob("explain_*.png"))) == 4


# ---------------------------------------------------------------- 2, 3, 6. stored units
def test_a_unit_of_other_code_is_recomputed_and_each_unit_names_its_commit(tmp_path, monkeypatch):
    store = suite.Store(tmp_path)
    first = store.unit("exp", "M", {"k": 1}, lambda: result(1.0))
    again = store.unit("exp", "M", {"k": 1}, lambda: pytest.fail("reused unit recomputed"))
    assert again.raw == first.raw and store.commits["exp/M"] == git_commit()
    saved = json.loads((tmp_path / "exp" / "M" / "unit.json").read_text())
    assert saved["commit"] == git_commit() and saved["key"]["code"] == suite.code_digest()
    monkeypatch.setattr(suite, "code_digest", lambda: "other code")       # an edit to any computing module
    changed = store.unit("exp", "M", {"k": 1}, lambda: result(3.0))
    assert changed.raw == {"v": 3.0} and store.computed == ["exp/M", "exp/M"]


def test_the_code_digest_follows_the_code(tmp_path, monkeypatch):
    """The digest is of the files' content: a copy of the package with one byte changed gets another one."""
    import shutil
    import experiments
    suite.code_digest.cache_clear()
    base = suite.code_digest()
    copy = tmp_path / "experiments"
    shutil.copytree(Path(experiments.__file__).parent, copy)
    (copy / "scrambling.py").write_text((copy / "scrambling.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(suite, "__file__", str(copy / "suite.py"))
    suite.code_digest.cache_clear()
    try:
        assert suite.code_digest() != base
    finally:
        monkeypatch.undo()
        suite.code_digest.cache_clear()
    assert suite.code_digest() == base


def test_a_unit_killed_between_its_files_leaves_no_unit_and_never_mixes_configs(tmp_path, monkeypatch):
    """Killed after the unit's figures and before unit.pt: no unit is left (its staging folder is not read);
    completed later by another config, the unit has that config's figures only."""
    store = suite.Store(tmp_path)
    real = io.save_checkpoint
    monkeypatch.setattr(io, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        store.unit("exp", "M", {"cfg": "A"}, lambda: result(1.0, figures=("grid_2",)))
    monkeypatch.setattr(io, "save_checkpoint", real)
    assert not (tmp_path / "exp" / "M").exists()
    res = store.unit("exp", "M", {"cfg": "B"}, lambda: result(2.0, figures=("grid_4",)))
    unit = tmp_path / "exp" / "M"
    assert sorted(p.name for p in unit.glob("figure_*.png")) == ["figure_grid_4.png"] and list(res.figures) == ["grid_4"]


def test_a_unit_being_written_by_another_process_is_refused(tmp_path, repo_root):
    import sys
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bagnet import io\n"
                               f"with io.dir_lock({str(tmp_path / 'exp')!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=repo_root)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"in use by process {holder.pid}"):
            suite.Store(tmp_path).unit("exp", "M", {}, lambda: pytest.fail("computed under another's lock"))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("damage", [b"", b"PK\x03\x04 truncated", None])
def test_a_damaged_unit_file_is_computed_again_with_a_note(tmp_path, capsys, damage):
    store = suite.Store(tmp_path)
    store.unit("exp", "M", {}, lambda: result(1.0))
    marker = tmp_path / "exp" / "M" / "unit.pt"
    marker.write_bytes(damage if damage is not None else marker.read_bytes()[: marker.stat().st_size // 2])
    res = store.unit("exp", "M", {}, lambda: result(2.0))
    assert res.raw == {"v": 2.0} and f"{marker} is damaged" in capsys.readouterr().out
    assert torch.load(marker, weights_only=True)["result"]["raw"] == {"v": 2.0}


def test_raw_json_names_the_commit_of_every_unit(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides)
    ecfg, _ = run_in_process(*tiny_overrides, *SCRAMBLE, f"+models.B9={cfg.run_dir}")
    blob = io.read_result(Path(ecfg.out_dir) / "raw.json")
    assert blob["units"] == {"scrambling/all": git_commit()}     # scrambling: one unit for all models


# ---------------------------------------------------------------- 9. provenance: untracked code
def test_untracked_source_files_make_the_commit_dirty(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    assert not git_commit(tmp_path).endswith("-dirty")
    (tmp_path / "notes.md").write_text("docs are not code\n")
    assert not git_commit(tmp_path).endswith("-dirty")
    (tmp_path / "b.py").write_text("y = 2\n")                   # never added: it computes results all the same
    assert git_commit(tmp_path).endswith("-dirty")


# ---------------------------------------------------------------- 11. sweeps over any key
def test_a_sweep_over_a_trainer_key_gives_each_point_its_own_run_dir(tmp_path, run_cli, tiny_overrides):
    r = run_cli("-m", "task=train", *tiny_overrides, "trainer.lr=0.1,0.05", f"paths.root_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    dirs = sorted(p.parent.name for p in (tmp_path / "runs/train/synthetic/bagnet9_w4").glob("*/summary.json"))
    assert dirs == ["debug-seed0,trainer.lr=0.05", "debug-seed0,trainer.lr=0.1"]
    lrs = {json.loads((tmp_path / "runs/train/synthetic/bagnet9_w4" / d / "summary.json").read_text())
           ["provenance"]["config"]["trainer"]["lr"] for d in dirs}
    assert lrs == {0.1, 0.05}
