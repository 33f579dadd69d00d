"""Issue 16: runs and results that cannot be silently reused, overwritten or hijacked.

Safe loading, run identity (train and eval), validation before writing, results folders, and
the smaller promises (epochs, truncated checkpoints, orphaned temp files, permissions, messages,
bad-image counts, class names). Locks: test_guarantees_locks.py. README "Guarantees" lists these tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bagnet import io
from bagnet.config import compose
from bagnet.data import DataError, build_data
from bagnet.data.scene15 import SCENE15_CLASSES
from bagnet.errors import ConfigError, UserError, WeightsError
from bagnet.result import Result
from bagnet.run import run_task


def fake_scene15(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for c in SCENE15_CLASSES:
        for i in range(per_class):
            d = root / ("train" if i < per_class // 2 else "test") / c
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (36, 40), dtype=np.uint8), "L").save(d / f"image_{i:04d}.jpg")
    return root


# ---------------------------------------------------------------- 1. loading a file runs no code
@pytest.mark.parametrize("via", ["checkpoint", "model.weights"])
def test_crafted_file_is_refused_without_running_its_code(tmp_path, via, run_in_process, compose_config, makes_a_file):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model_spec": {"name": "resnet18"}, "model": {}, "state_dict": {}, "x": makes_a_file(marker)}, evil)
    args = ["task=eval", "device=cpu", "data=synthetic", "data.image_size=64", "data.samples_per_class=4"]
    args += [f"checkpoint={evil}", "model=bagnet9"] if via == "checkpoint" else ["model=resnet18", f"model.weights={evil}"]
    cfg = compose_config(*args)
    with pytest.raises(ConfigError if via == "checkpoint" else WeightsError) as e:
        run_in_process(*args)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"refused to load {'weights file ' if via != 'checkpoint' else ''}{evil}")
    assert "open" in msg                       # names what it refused: the global 'open'
    assert not marker.exists()
    assert not Path(cfg.run_dir).exists()


def test_hub_cache_file_is_hash_checked_and_loaded_safely(tmp_path, monkeypatch, makes_a_file):
    from bagnet.models import weights as W
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_download(*a, **k):
        raise AssertionError("a cached file must not be downloaded again")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)

    def cached(obj, stem: str) -> str:
        tmp = hub / "checkpoints" / "tmp"
        torch.save(obj, tmp)
        name = f"{stem}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
        tmp.rename(hub / "checkpoints" / name)
        return name

    good = cached({"w": torch.ones(2)}, "good")
    assert torch.equal(W.fetch_state_dict(f"https://example.org/{good}")["w"], torch.ones(2))

    marker = tmp_path / "code_ran"
    evil = cached({"w": makes_a_file(marker)}, "evil")     # its name carries its true hash
    with pytest.raises(WeightsError, match="refused to load weights file") as e:
        W.fetch_state_dict(f"https://example.org/{evil}")
    assert "\n" not in str(e.value) and not marker.exists()

    replaced = hub / "checkpoints" / good.replace("good-", "other-")   # same hash in the name, other content
    torch.save({"w": torch.zeros(2)}, replaced)
    with pytest.raises(WeightsError, match="sha256 does not match") as e:
        W.fetch_state_dict(f"https://example.org/{replaced.name}")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- 2. a run is reused only by its own config
def test_a_run_is_reused_only_by_its_own_config(tmp_path, run_in_process, compose_config, make_image_folder,
                                                folder_args):
    """Another data.root, another trainer.lr, or a max_steps_per_epoch run asked for as the full run: refused,
    naming the key that differs, and the run dir is left as it was."""
    a, b = make_image_folder(tmp_path / "A", seed=0), make_image_folder(tmp_path / "B", seed=1)
    cfg, _ = run_in_process(*folder_args(a))
    run_dir = Path(cfg.run_dir)
    assert cfg.trainer.max_steps_per_epoch == 1
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    for other, diff in ((folder_args(b), r"data\.root: .*/A -> .*/B"),
                        (folder_args(a, "trainer.lr=0.5"), r"holds a run with another config \(.*trainer\.lr: "),
                        (folder_args(a, "trainer.max_steps_per_epoch=null"),
                         r"trainer\.max_steps_per_epoch: 1 -> None")):
        with pytest.raises(ConfigError, match=diff):
            run_in_process(*other)
        assert compose_config(*other).run_dir == cfg.run_dir
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


def test_eval_of_another_checkpoint_into_an_eval_dir_is_refused(tmp_path, run_in_process, tiny_overrides):
    a, _ = run_in_process(*tiny_overrides, "run_name=A")
    b, _ = run_in_process(*tiny_overrides, "run_name=B", "trainer.lr=0.01")
    ev, _ = run_in_process(*tiny_overrides, "task=eval", f"checkpoint={a.run_dir}", "run_name=evalA")
    eval_dir = Path(ev.run_dir)
    before = {p: p.stat().st_mtime_ns for p in eval_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="holds the evaluation of another checkpoint"):
        run_in_process(*tiny_overrides, "task=eval", f"checkpoint={b.run_dir}", "run_name=evalA")
    assert {p: p.stat().st_mtime_ns for p in eval_dir.rglob("*") if p.is_file()} == before
    # the same checkpoint again is fine; so is B into a dir of its own
    run_in_process(*tiny_overrides, "task=eval", f"checkpoint={a.run_dir}/checkpoints/best.pt", "run_name=evalA")
    run_in_process(*tiny_overrides, "task=eval", f"checkpoint={b.run_dir}", "run_name=evalB")
    # and an evaluation never writes into a training run's dir
    with pytest.raises(ConfigError, match="task: train -> eval"):
        run_in_process(*tiny_overrides, "task=eval", f"checkpoint={b.run_dir}", f"run_dir={a.run_dir}")


# ---------------------------------------------------------------- 3. validated before anything is written
@pytest.mark.parametrize("bad, fixed, key", [
    (["trainer.epochs=abc"], ["trainer.epochs=1"], "trainer.epochs"),
    (["trainer.batch_size=-4"], ["trainer.batch_size=4"], "trainer.batch_size"),
    (["data=scene15", "data.on_bad_image=crash"], ["data=scene15", "data.on_bad_image=skip"], "data.on_bad_image"),
    (["model.width=0"], ["model.width=4"], "model.width=0"),
    (["data=imagefolder", "model=bagnet33", "data.image_size=24"],
     ["data=imagefolder", "model=bagnet33", "data.image_size=40"], "data.image_size=24"),
], ids=["epochs", "batch_size", "on_bad_image", "width", "image_size"])
def test_invalid_command_writes_nothing_and_the_corrected_one_runs(tmp_path, bad, fixed, key, make_image_folder):
    common = ["debug=fast", "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.batch_size=4",
              "device=cpu", "model=bagnet9", "model.width=4", "data.workers=0", f"paths.root_dir={tmp_path}"]
    if "data=scene15" in bad:
        common += [f"data.root={fake_scene15(tmp_path / 'scene15')}", "data.test_per_class=2", "data.image_size=32"]
    elif "data=imagefolder" in bad:
        common += [f"data.root={make_image_folder(tmp_path / 'folder')}"]
    else:
        common += ["data.image_size=64", "data.samples_per_class=6"]
    # in-process (the command line prints this error as one line, exit 2, writing nothing: test_runner.py's
    # test_a_user_error_is_one_line_with_exit_code_2)
    with pytest.raises(UserError) as e:
        run_task(compose([*common, *bad]))
    assert key in str(e.value)
    assert not (tmp_path / "runs").exists(), sorted(tmp_path.joinpath("runs").rglob("*"))
    cfg = compose([o for o in common if o.split("=")[0] not in {f.split("=")[0] for f in fixed}] + fixed)
    run_task(cfg)
    assert (Path(cfg.run_dir) / "summary.json").is_file()


def test_rerunning_a_finished_run_rewrites_nothing(tmp_path, capsys, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides)
    run_dir = Path(cfg.run_dir)
    files = [run_dir / f for f in ("config.yaml", "provenance.json", "summary.json", "checkpoints/last.pt")]
    before = {f: f.stat().st_mtime_ns for f in files}
    wall = json.loads((run_dir / "summary.json").read_text())["train_wall_s"]
    time.sleep(0.05)
    _, result = run_in_process(*tiny_overrides, "trainer.progress=true")   # not part of the run's identity
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert json.loads((run_dir / "summary.json").read_text())["train_wall_s"] == wall
    assert f"training took {wall / 60:.1f} min" in result.summary and "reusing the finished run" in capsys.readouterr().out


# ---------------------------------------------------------------- 5. results folders
def probe_task(ctx) -> Result:
    """A task with a table: its value depends on the seed only."""
    return Result(tables={"probe": pd.DataFrame({"seed": [ctx.cfg.seed]})}, raw={"seed": ctx.cfg.seed},
                  summary=f"seed {ctx.cfg.seed}")


@pytest.mark.parametrize("extra", [[], ["experiment=table1"], ["experiment=demo"], ["experiment=signatures"],
                                   ["experiment=eval_imagenet"]], ids=["plain", "table1", "demo", "signatures", "imagenet"])
def test_debug_fast_writes_results_under_runs(tmp_path, extra, compose_config):
    for task in ("train", "heatmaps", "scrambling", "demo", "pipeline"):
        cfg = compose_config(f"task={task}", *extra, "debug=fast")
        assert Path(cfg.out_dir).is_relative_to(Path(cfg.paths.runs_dir)), (task, cfg.out_dir)
        assert not Path(cfg.out_dir).is_relative_to(tmp_path / "results"), (task, cfg.out_dir)


def test_results_of_another_config_are_not_replaced(tmp_path, capsys, monkeypatch, run_in_process):
    from experiments import registry
    monkeypatch.setitem(registry.PIPELINES, "probe", probe_task)      # a task of the registry, for this test
    probe = ["task=probe", "device=cpu"]
    cfg, _ = run_in_process(*probe)
    raw = Path(cfg.out_dir) / "raw.json"
    assert json.loads(raw.read_text())["raw"] == {"seed": 0}
    assert "replacing" not in capsys.readouterr().out
    # keys that cannot change results do not count; the replacement is announced
    run_in_process(*probe, "trainer.progress=false", "data.workers=1", "paths.runs_dir=elsewhere")
    assert f"replacing the results in {cfg.out_dir}" in capsys.readouterr().out
    # a key the saved config did not have yet (added to the configs since) is not another experiment
    run_in_process(*probe, "+brand_new_key=1")
    assert f"replacing the results in {cfg.out_dir}" in capsys.readouterr().out
    written = raw.read_text()
    with pytest.raises(ConfigError, match=r"holds results of another config \(.*seed: 0 -> 1.*overwrite=true") as e:
        run_in_process(*probe, "seed=1")
    assert "\n" not in str(e.value) and raw.read_text() == written
    run_in_process(*probe, "seed=1", "overwrite=true")
    out = capsys.readouterr().out
    assert f"replacing the results in {cfg.out_dir}" in out and "config differs, overwrite=true:" in out
    assert "seed: 0 -> 1" in out
    assert json.loads(raw.read_text())["raw"] == {"seed": 1}
    assert not (Path(cfg.out_dir) / ".lock").exists()


def test_results_saved_under_a_renamed_key_are_read_under_todays_name():
    """The block of every experiment's settings was called ``signatures``; results saved then are the same config
    (make demo on a fresh clone replaces the committed demo), a changed setting inside it is not."""
    from bagnet.identity import experiment_settings, identity_diff, results_identity
    today = {"seed": 0, "experiments": {"scrambling": {"grids": [2, 4]}}}
    saved = {"seed": 0, "signatures": {"scrambling": {"grids": [2, 4]}}}
    assert identity_diff(results_identity(saved), results_identity(today)) == []
    assert experiment_settings(saved) == experiment_settings(today) == {"scrambling": {"grids": [2, 4]}}
    other = {"seed": 0, "signatures": {"scrambling": {"grids": [8]}}}
    assert identity_diff(results_identity(other), results_identity(today))


def test_a_named_dataset_elsewhere_is_the_same_config_an_image_folder_is_not():
    """Imagenette2 or 15-Scene at another path are the same images (their loaders check the layout): the committed
    results are replaced without overwrite=true; an imagefolder is known only by its path."""
    from bagnet.identity import identity_diff, results_identity
    for name in ("imagenette", "scene15", "imagenet"):
        here = {"seed": 0, "data": {"name": name, "root": "/work/shared/data/x", "image_size": 112}}
        there = {"seed": 0, "data": {"name": name, "root": "/home/me/data/x", "image_size": 112}}
        assert identity_diff(results_identity(here), results_identity(there)) == []
        assert identity_diff(results_identity(here), results_identity({**there, "data": {**there["data"], "image_size": 96}}))
    here = {"seed": 0, "data": {"name": "imagefolder", "root": "/a"}}
    assert identity_diff(results_identity(here), results_identity({**here, "data": {"name": "imagefolder", "root": "/b"}}))


def test_the_committed_demo_is_the_demo_config_of_today(compose_config):
    """make demo on a fresh clone replaces results/demo without overwrite=true, also with another runs folder
    (here the test's; BAGNET_RUNS_DIR): the committed results were made by today's demo config (re-make them when a
    demo setting changes)."""
    from bagnet.run import check_results_dir
    repo = Path(__file__).resolve().parents[1]
    cfg = compose_config("experiment=demo", f"out_dir={repo / 'results' / 'demo'}")
    assert check_results_dir(cfg, repo / "results" / "demo").startswith("replacing the results in")

# ---------------------------------------------------------------- 6. the smaller promises
def test_zero_epochs_is_refused_before_writing(tmp_path, run_in_process, compose_config, tiny_overrides):
    cfg = compose_config(*tiny_overrides, "trainer.epochs=0")
    with pytest.raises(ConfigError, match=r"trainer\.epochs: must be >= 1 for training, got 0"):
        run_in_process(*tiny_overrides, "trainer.epochs=0")
    assert not Path(cfg.run_dir).exists()


def test_truncated_last_checkpoint_names_the_way_out(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides)
    last = Path(cfg.run_dir) / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ConfigError) as e:
        run_in_process(*tiny_overrides)
    msg = str(e.value)
    assert "\n" not in msg and "truncated" in msg
    assert f"checkpoint={last.with_name('best.pt')}" in msg and "trainer.resume=false" in msg
    run_in_process(*tiny_overrides, "trainer.resume=false")   # the way out works
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_experiment_records_its_models_and_refuses_an_unfinished_run_dir(tmp_path, run_in_process, tiny_overrides):
    """An experiment's provenance names each model's checkpoint (sha256) and the run it came from (commit,
    val/test top-1). A run dir still training (or interrupted) has a best.pt of some epoch, not the run's
    result: given the dir, the experiment refuses it with one line; given the checkpoint file, it uses it."""
    from bagnet.utils import file_sha256
    cfg, _ = run_in_process(*tiny_overrides)
    run_dir = Path(cfg.run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    exp = [*tiny_overrides, "task=scrambling", "experiments.scrambling.num_images=4", "experiments.scrambling.grids=[2]",
           "experiments.scrambling.texture=false", "experiments.scrambling.num_examples=1"]
    ecfg, _ = run_in_process(*exp, f"+models.B9={run_dir}")
    recorded = json.loads((Path(ecfg.out_dir) / "raw.json").read_text())["provenance"]["models"]["B9"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert recorded["sha256"] == file_sha256(best) and recorded["checkpoint"] == str(best)
    assert {s: (m["top1"], m["n"]) for s, m in recorded["top1"].items()} == {
        s: (pytest.approx(m["top1"]), m["n"]) for s, m in summary["eval"].items()}
    assert all(m["lo"] <= m["top1"] <= m["hi"] for m in recorded["top1"].values())
    assert recorded["git_commit"] == summary["provenance"]["git_commit"]

    (run_dir / "summary.json").unlink()                       # as while training, or after a kill
    with pytest.raises(ConfigError, match="has not finished training") as e:
        run_in_process(*exp, f"+models.B9={run_dir}", "overwrite=true")
    assert "\n" not in str(e.value) and str(best) in str(e.value)
    _, result = run_in_process(*exp, f"+models.B9={best}", "overwrite=true")
    assert list(result.tables["accuracy"]["model"].unique()) == ["B9"]


def test_orphaned_temp_files_are_removed_when_a_run_dir_is_reopened(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides)
    run_dir = Path(cfg.run_dir)
    orphans = [run_dir / "checkpoints" / ".last.pt.abc123.tmp", run_dir / "eval" / ".metrics.json.x.tmp",
               run_dir / ".summary.json.y.tmp"]
    for p in orphans:
        p.write_bytes(b"\0" * 10)
    run_in_process(*tiny_overrides)
    assert not any(p.exists() for p in orphans)
    assert (run_dir / "checkpoints" / "last.pt").is_file()


def test_written_files_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        for mask in (0o022, 0o027, 0o002):
            os.umask(mask)
            for path in (io.write_json({"a": 1}, tmp_path / f"{mask:o}.json"),
                         io.save_checkpoint({"a": torch.ones(1)}, tmp_path / f"{mask:o}.pt"),
                         *io.write_table(pd.DataFrame({"a": [1]}), tmp_path / f"t{mask:o}")):
                assert path.stat().st_mode & 0o777 == 0o666 & ~mask, (path, oct(path.stat().st_mode))
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", ["scene15", "imagefolder", "imagenet", "imagenette"])
def test_missing_data_root_names_the_make_variable(tmp_path, name):
    with pytest.raises(DataError) as e:
        build_data({"name": name, "root": str(tmp_path / "nowhere"), "image_size": 32})
    msg = str(e.value)
    assert "\n" not in msg and "data.root=" in msg and "DATA_ROOT=" in msg


def test_eval_on_data_with_other_class_names_is_refused(tmp_path, run_in_process, compose_config, tiny_overrides):
    two = ["data.classes=[local_plus,local_x]"]
    train, _ = run_in_process(*tiny_overrides, *two)
    other = ["task=eval", f"checkpoint={train.run_dir}", "data.classes=[local_plus,local_ring]"]
    cfg = compose_config(*tiny_overrides, *other)
    with pytest.raises(ConfigError, match=r"trained on other (classes|data).*local_x.*local_ring"):
        run_in_process(*tiny_overrides, *other)
    assert not Path(cfg.run_dir).exists()
    run_in_process(*tiny_overrides, "task=eval", f"checkpoint={train.run_dir}", *two)   # the same classes: fine


def test_data_that_cannot_be_used_is_refused_before_writing(tmp_path, run_in_process, compose_config, make_image_folder,
                                                            tiny_overrides, folder_args):
    # synthetic below 48 px: its generator could not place the motifs and never returned
    with pytest.raises(ConfigError, match=r"data\.image_size: synthetic data needs >= 48, got 32"):
        run_in_process(*tiny_overrides, "data.image_size=32")
    # one image per class: the seeded hold-out leaves val empty
    root = make_image_folder(tmp_path / "data", n=1)
    cfg = compose_config(*folder_args(root))
    with pytest.raises(DataError, match="the val/test split is empty"):
        run_in_process(*folder_args(root))
    assert not (tmp_path / "runs").exists() and not Path(cfg.run_dir).exists()


def test_run_from_before_identity_version_2_is_still_reused(tmp_path, run_in_process, tiny_overrides):
    """Checkpoints written before data.root and max_steps_per_epoch joined the identity are checked on
    those keys against the run's config.yaml, so finished and interrupted older runs are not refused."""
    cfg, _ = run_in_process(*tiny_overrides)
    last = Path(cfg.run_dir) / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["identity_version"], ckpt["identity"]["data"]["root"], ckpt["identity"]["trainer"]["max_steps_per_epoch"]
    torch.save(ckpt, last)
    mtime = last.stat().st_mtime_ns
    run_in_process(*tiny_overrides)                            # reused
    assert last.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match=r"trainer\.max_steps_per_epoch: 1 -> None"):
        run_in_process(*tiny_overrides, "trainer.max_steps_per_epoch=null")
