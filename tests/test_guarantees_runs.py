"""Issue 23: no wrong results, no poisoned run dirs. Each test failed before its fix (README "Guarantees").

Experiments on the data their runs were trained on; finished markers that tell the truth (retrain,
early stop); failed commands that leave nothing behind; locks that a full disk cannot wedge; run names
that stay inside their folder; accumulation that always steps; bad checkpoints, classes, seeds, devices
and signals in one line; read-only finished runs; data changed under the same root; the last lone batch.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bagnet import io
from bagnet.errors import ConfigError, DataError, TrainingDiverged


def files_of(d: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. experiments on their runs' data
def test_experiment_refuses_runs_trained_on_other_data(tmp_path, run_in_process, make_image_folder, tiny_overrides):
    a, _ = run_in_process(*tiny_overrides, "run_name=A")
    b, _ = run_in_process(*tiny_overrides, "run_name=B", "model=bagnet17")
    folder = make_image_folder(tmp_path / "two", n=6)
    args = ["task=error_overlap", f"+models.A={a.run_dir}", f"+models.B={b.run_dir}", "device=cpu", "debug=fast"]
    with pytest.raises(ConfigError, match=r"models\.A .* was trained on other data than this error_overlap uses "
                                          r"\(.*data\.name: synthetic -> imagefolder"):
        run_in_process(*args, "data=imagefolder", f"data.root={folder}", "data.image_size=64")
    with pytest.raises(ConfigError, match=r"seed: 0 -> 1"):   # another seed draws other images
        run_in_process(*args, *tiny_overrides[:5], "seed=1")
    _, result = run_in_process(*args, *tiny_overrides[:5])                # the runs' own data: fine
    assert set(result.tables["pairs"][["model_a", "model_b"]].values.ravel()) == {"A", "B"}


# ---------------------------------------------------------------- 2, 3. finished means finished
def test_an_interrupted_retrain_is_not_finished(tmp_path, monkeypatch, run_in_process, tiny_overrides):
    import bagnet.train as T
    cfg, _ = run_in_process(*tiny_overrides, "trainer.epochs=2")
    run_dir = Path(cfg.run_dir)
    assert (run_dir / "summary.json").is_file()
    real = T.train_one_epoch

    def dies_in_second_epoch(*a, **k):
        if a[8] == 1:            # the epoch index: the second epoch
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(T, "train_one_epoch", dies_in_second_epoch)
    with pytest.raises(Exception, match="interrupted while training"):
        run_in_process(*tiny_overrides, "trainer.epochs=2", "trainer.resume=false")
    assert not (run_dir / "summary.json").exists()      # the old run's marker does not vouch for new weights
    with pytest.raises(ConfigError, match="has not finished training"):
        run_in_process(*tiny_overrides, "task=eval", f"checkpoint={run_dir}", "run_name=ev")


def test_rerunning_an_early_stopped_run_rewrites_nothing(tmp_path, monkeypatch, run_in_process, tiny_overrides):
    import bagnet.train as T
    args = [*tiny_overrides, "trainer.epochs=8", "trainer.schedule=plateau_halving", "trainer.warmup_epochs=0",
            "trainer.early_stop=1", "trainer.patience=1"]
    real, accs = T.evaluate, iter([0.5] + [0.1] * 10)     # val accuracy falls after epoch 1: stop after epoch 2

    def falling(*a, **k):
        metrics, df = real(*a, **k)
        return {**metrics, "top1": next(accs)}, df
    monkeypatch.setattr(T, "evaluate", falling)
    cfg, _ = run_in_process(*args)
    monkeypatch.setattr(T, "evaluate", real)
    summary = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert summary["stopped_early"] and summary["epochs"] == 2
    before = files_of(Path(cfg.run_dir))
    run_in_process(*args)
    assert files_of(Path(cfg.run_dir)) == before


# ---------------------------------------------------------------- 4. failed commands leave nothing behind
@pytest.mark.parametrize("bad, key", [
    (["trainer.precision=fp16"], "trainer.precision=fp16"),
    (["trainer.optimizer=sgd", "trainer.momentum=0"], "trainer.momentum"),
    (["trainer.momentum=-1"], "trainer.momentum"),
    (["trainer.warmup_epochs=-1"], "trainer.warmup_epochs"),
    (["trainer.label_smoothing=2"], "trainer.label_smoothing"),
    (["trainer.schedule=step", "trainer.step_size=0"], "trainer.step_size"),
    (["seed=-1"], "seed"), (["seed=abc"], "seed"), (["device=foo"], "device"),
    (["run_name=../../../../results/demo/accuracy"], "run_name"), (["run_name=.."], "run_name"),
    (["data.num_classes=100"], "data.num_classes=100"), (["data.num_classes=1"], "data.num_classes=1"),
])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, bad, key, run_in_process, tiny_overrides):
    with pytest.raises((ConfigError, DataError), match=key.replace(".", r"\.").replace("(", r"\(")):
        run_in_process(*tiny_overrides, *bad)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_diverged_run_stops_in_one_line_and_the_corrected_command_runs(tmp_path, run_in_process, tiny_overrides):
    # the first step's loss is finite, the second (after a step of lr 1e30) is not: nothing was saved yet
    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at epoch 1 step 2 .*lower trainer\.lr"):
        run_in_process(*tiny_overrides, "trainer.lr=1e30", "trainer.optimizer=sgd", "trainer.max_steps_per_epoch=2")
    # same run dir, a sane lr: not refused as "another config" (the failed command left no checkpoint)
    cfg, _ = run_in_process(*tiny_overrides, "trainer.optimizer=sgd", "trainer.max_steps_per_epoch=2")
    assert (Path(cfg.run_dir) / "summary.json").is_file()


# ---------------------------------------------------------------- 7. accumulation always steps
def test_accumulation_longer_than_an_epoch_still_trains(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides, "trainer.accum_steps=2")   # one micro-batch per epoch
    ckpt = torch.load(Path(cfg.run_dir) / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["state"], "the optimizer never stepped"


# ---------------------------------------------------------------- 8. bad checkpoints in one line
@pytest.fixture
def tampered(tmp_path, run_in_process, tiny_overrides):
    """``tampered(change)``: a tiny run's best.pt, changed by ``change(ckpt)``, saved as ``tmp_path/bad.pt``."""
    def tampered(change) -> Path:
        cfg, _ = run_in_process(*tiny_overrides)
        ckpt = torch.load(Path(cfg.run_dir) / "checkpoints" / "best.pt", weights_only=True)
        change(ckpt)
        path = tmp_path / "bad.pt"
        torch.save(ckpt, path)
        return path
    return tampered


@pytest.mark.parametrize("name, change, expect", ids=["shapes", "resnet_weights", "no_kwargs", "tensor_as_model"],
                         argvalues=[
    ("shapes", lambda c: c["model"].update({k: torch.zeros(3) for k in list(c["model"])[:1]}), "shape mismatches"),
    ("resnet weights", lambda c: c.update(model=__import__("bagnet").create_model(
        "resnet18", num_classes=7).state_dict()), "missing keys"),
    ("no kwargs", lambda c: c["model_spec"].pop("kwargs"), "model_spec needs name, kwargs"),
    ("tensor as model", lambda c: c.update(model=torch.zeros(3)), "its model a state dict"),
    ])
def test_bad_checkpoints_end_in_one_line(tmp_path, name, change, expect, run_in_process, run_cli, tiny_overrides,
                                         one_error_line, tampered):
    path = tampered(change)
    if name == "shapes":                                                   # the command line: one line, exit 2
        r = run_cli(*tiny_overrides, "task=eval", f"checkpoint={path}", f"paths.root_dir={tmp_path}", "run_name=ev")
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and str(path) in line and expect in line, line
    with pytest.raises(ConfigError, match=expect) as e:
        run_in_process(*tiny_overrides, "task=eval", f"checkpoint={path}", "run_name=ev")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=expect) as e:                  # the same through an experiment's models
        run_in_process(*tiny_overrides, "task=scrambling", f"+models.X={path}")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- 9. the smaller holes
def test_one_class_is_refused(tmp_path, run_in_process, make_image_folder, tiny_overrides):
    folder = make_image_folder(tmp_path / "one", classes=("only",), n=6)
    with pytest.raises(DataError, match="1 class.*at least 2"):
        run_in_process("data=imagefolder", f"data.root={folder}", "data.image_size=32", *tiny_overrides[5:])
    assert not (tmp_path / "runs").exists()


def test_sigterm_stops_training_with_one_line_and_the_rerun_resumes(tmp_path, tiny_overrides, repo_root,
                                                                    one_error_line):
    args = [*tiny_overrides, "trainer.epochs=200", "trainer.max_steps_per_epoch=1", f"paths.root_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "bagnet.run", *args], cwd=repo_root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:                      # wait for the first finished epoch, then stop the run
        if line.startswith("epoch 1/200"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=300)
    line = one_error_line(err)
    assert proc.returncode == 130 and "interrupted while training" in line and "resume" in line, err[-2000:]
    assert list(tmp_path.rglob("last.pt")), "the finished epoch's checkpoint is kept"


def test_a_read_only_finished_run_is_reused(tmp_path, monkeypatch, run_in_process, tiny_overrides):
    import bagnet.checks as checks
    import bagnet.tasks as tasks
    cfg, _ = run_in_process(*tiny_overrides)

    def cannot_lock(directory, what="run dir"):     # what creating .lock in a read-only folder does
        raise PermissionError(13, "Permission denied", str(Path(directory) / io.LOCK_NAME))
    monkeypatch.setattr(tasks.io, "dir_lock", cannot_lock)
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)   # read-only even for root
    _, result = run_in_process(*tiny_overrides)
    assert "best val top-1" in result.summary


def test_data_changed_under_the_same_root_is_refused(tmp_path, run_in_process, make_image_folder, tiny_overrides):
    folder = make_image_folder(tmp_path / "data", n=6)
    args = ["data=imagefolder", f"data.root={folder}", "data.image_size=32", *tiny_overrides[5:], "trainer.epochs=2"]
    cfg, _ = run_in_process(*args)
    (Path(cfg.run_dir) / "summary.json").unlink()          # as if interrupted after its last epoch
    make_image_folder(tmp_path / "data", classes=("a", "b"), n=9, seed=1)   # 3 more images per class
    with pytest.raises(ConfigError, match="trained on other files under data.root"):
        run_in_process(*args)


def test_a_last_training_batch_of_one_image_is_dropped(tmp_path, run_in_process, compose_config, make_image_folder,
                                                       tiny_overrides):
    from bagnet.data import build_data
    folder = make_image_folder(tmp_path / "data", n=8)
    args = ["data=imagefolder", f"data.root={folder}", "data.image_size=32", *tiny_overrides[5:-2], "model=resnet18",
            "trainer.max_steps_per_epoch=null"]
    n_train = len(build_data(compose_config(*args).data, seed=0).train)
    # at 32 px ResNet-18's last stage is 1x1: BatchNorm cannot normalise a batch of one such image
    cfg, _ = run_in_process(*args, f"trainer.batch_size={n_train - 1}")
    assert (Path(cfg.run_dir) / "summary.json").is_file()


def test_crafted_paper_unit_is_refused_without_running_its_code(tmp_path, makes_a_file):
    from experiments.suite import Store
    marker = tmp_path / "ran"
    unit = tmp_path / "store" / "accuracy" / "M" / "unit.pt"
    unit.parent.mkdir(parents=True)
    torch.save({"key": {}, "result": makes_a_file(marker)}, unit)
    with pytest.raises(ConfigError, match="refused to load .*unit.pt"):
        Store(tmp_path / "store").unit("accuracy", "M", {}, lambda: None)
    assert not marker.exists()


def test_time_of_an_interrupted_epoch_counts_in_the_training_time(tmp_path, monkeypatch, run_in_process, compose_config,
                                                                  tiny_overrides):
    import bagnet.train as T
    real = T.train_one_epoch

    def slow_then_interrupted(*a, **k):
        if a[8] == 1:
            time.sleep(0.5)
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(T, "train_one_epoch", slow_then_interrupted)
    with pytest.raises(Exception, match="interrupted while training"):
        run_in_process(*tiny_overrides, "trainer.epochs=2")
    cfg = compose_config(*tiny_overrides, "trainer.epochs=2")
    lost = json.loads((Path(cfg.run_dir) / T.LOST_FILE).read_text())["lost_s"]
    assert lost >= 0.5
    monkeypatch.setattr(T, "train_one_epoch", real)
    run_in_process(*tiny_overrides, "trainer.epochs=2")
    summary = json.loads((Path(cfg.run_dir) / "summary.json").read_text())
    assert summary["train_wall_s"] >= lost          # the interrupted half-epoch is in the total
    assert not (Path(cfg.run_dir) / T.LOST_FILE).exists()
