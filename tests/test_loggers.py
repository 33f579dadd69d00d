"""The ``logger=`` group: each backend's points read back from what it wrote (TensorBoard's event files, the W&B
offline run directory, the MLflow file store, logs/steps.csv), continued on the same step axis by a resumed run
with no point twice, several loggers at once, and a bad name refused in one line. A backend whose package is
missing is skipped, except on CI (CI=true), which installs the test extra with all of them."""
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bagnet.train
from bagnet.errors import ConfigError, Interrupted
from bagnet.loggers import check, check_overrides

PACKAGES = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
STEPS = 3                                    # optimizer steps per epoch
RUN_DIR = ("runs", "train", "synthetic", "bagnet9_w4", "debug-seed0")


@pytest.fixture
def two_epochs(tiny_overrides) -> list[str]:
    """A tiny run of 2 epochs of STEPS steps."""
    return [*tiny_overrides, f"trainer.max_steps_per_epoch={STEPS}", "trainer.epochs=2"]


def need(name: str) -> None:
    package = PACKAGES[name]
    if package and importlib.util.find_spec(package) is None:
        msg = f"logger={name} needs {package} (pip install 'bagnet-repro[{name}]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI installs the test extra, which has it")
        pytest.skip(msg)


# ---------------------------------------------------------------- reading back what each backend wrote
def csv_points(run_dir: Path, tag: str) -> list[int]:
    lines = (run_dir / "logs" / "steps.csv").read_text().splitlines()
    assert lines[0] == "step,name,value"
    return [int(s) for s, name, _ in (ln.split(",") for ln in lines[1:]) if name == tag]


def tensorboard_points(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def wandb_records(path: Path):
    """The records of a W&B ``.wandb`` file (LevelDB's log format: 32 KiB blocks of checksum, length, type, data
    after a 7-byte header; wandb ships no reader of its own any more)."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, block, out, pos, buf = path.read_bytes(), 32768, [], 7, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:                     # the rest of a block too small for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        buf += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                              # full, or last part of a record
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
        elif kind == 0:
            break
    return out


def wandb_points(run_dir: Path, tag: str) -> list[int]:
    steps, ids = [], set()
    for f in sorted((run_dir / "logs" / "wandb").glob("offline-run-*/run-*.wandb")):
        for rec in wandb_records(f):
            if rec.WhichOneof("record_type") == "run":
                ids.add(rec.run.run_id)
            if rec.WhichOneof("record_type") == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
                if tag in row:
                    steps.append(row["_step"])
    assert len(ids) == 1, ids                           # every process logged into one W&B run
    return steps


def mlflow_points(run_dir: Path, tag: str) -> list[int]:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    store = run_dir.parents[3] / "mlruns"               # ${paths.runs_dir}/mlruns
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`bagnet.run_dir` = '{run_dir.resolve()}'")
    assert len(runs) == 1, runs                         # the resumed run logged into the same MLflow run
    return [m.step for m in sorted(client.get_metric_history(runs[0].info.run_id, tag), key=lambda m: m.timestamp)]


POINTS = {"csv": csv_points, "tensorboard": tensorboard_points, "wandb": wandb_points, "mlflow": mlflow_points}


def interrupt_in_epoch_2(monkeypatch, after_steps: int = 2):
    """Stop training like Ctrl-C after ``after_steps`` optimizer steps of the second epoch: the live loggers have
    logged points after the last checkpoint, which the resumed run must not repeat."""
    original = bagnet.train.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        if args[8] == 1:                                # epoch index (positional, as fit calls it)
            on_step, seen = args[13], []

            def stop_after(scalars):
                on_step(scalars)
                seen.append(1)
                if len(seen) == after_steps:
                    raise KeyboardInterrupt
            args = (*args[:13], stop_after)
        return original(*args, **kwargs)
    monkeypatch.setattr(bagnet.train, "train_one_epoch", train_one_epoch)


# ---------------------------------------------------------------- the tests
# W&B and MLflow start services and write stores: seconds each, so make test-slow runs them (make test: csv, tensorboard)
HEAVY = ("wandb", "mlflow")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in PACKAGES])
def test_a_resumed_run_continues_the_curves_without_duplicates(tmp_path, monkeypatch, name, run_in_process, two_epochs):
    need(name)
    with monkeypatch.context() as m:
        interrupt_in_epoch_2(m)
        with pytest.raises(Interrupted):
            run_in_process(*two_epochs, f"logger={name}")
    run_dir = tmp_path.joinpath(*RUN_DIR)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, STEPS)
    if name in ("csv", "tensorboard"):      # live: the interrupted epoch's first points are there until it resumes
        assert POINTS[name](run_dir, "train/loss") == list(range(1, STEPS + 3))
    run_in_process(*two_epochs, f"logger={name}")   # resumes from epoch 1
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["global_step"] == 2 * STEPS
    assert POINTS[name](run_dir, "train/loss") == list(range(1, 2 * STEPS + 1))   # strictly increasing, once each
    assert POINTS[name](run_dir, "train/lr") == list(range(1, 2 * STEPS + 1))
    assert POINTS[name](run_dir, "val/top1") == [STEPS, 2 * STEPS]                # per epoch, at its last step
    assert POINTS[name](run_dir, "epoch/train_loss") == [STEPS, 2 * STEPS]


def test_several_loggers_at_once_with_the_config_and_the_heatmap_figure(tmp_path, run_in_process, two_epochs):
    need("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run_in_process(*two_epochs, "logger=[csv,tensorboard]", "trainer.log_every_n_steps=2")
    run_dir = tmp_path.joinpath(*RUN_DIR)
    assert csv_points(run_dir, "train/loss") == [2, 4, 6] == tensorboard_points(run_dir, "train/loss")
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/top1", "train/lr", "train/img_per_s", "val/top1", "val/top5", "epoch/lr",
            "epoch/img_per_s", "epoch/number"} <= set(tags["scalars"])
    [image] = acc.Images("heatmaps")                    # the BagNet's heatmaps, once, at the last step
    assert image.step == 2 * STEPS and image.width > 100 and image.height > 100
    [config] = acc.Tensors("config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "model:" in text and "bagnet9" in text and "log_every_n_steps: 2" in text
    # the run dir's own record is there too
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 2


def test_the_csv_logger_is_the_default(tmp_path, run_in_process, tiny_overrides):
    cfg, _ = run_in_process(*tiny_overrides)
    assert dict(cfg.logger) == {"csv": {}}
    run_dir = tmp_path.joinpath(*RUN_DIR)
    assert csv_points(run_dir, "train/loss") == [1] and (run_dir / "metrics.csv").is_file()
    assert not (run_dir / "logs" / "tensorboard").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_wandb_and_mlflow_get_the_figure_and_the_config(tmp_path, name, run_in_process, tiny_overrides):
    need(name)
    run_in_process(*tiny_overrides, f"logger={name}")
    run_dir = tmp_path.joinpath(*RUN_DIR)
    if name == "wandb":
        [offline] = (run_dir / "logs" / "wandb").glob("offline-run-*")
        assert list(offline.glob("files/media/images/heatmaps_*.png"))
        records = wandb_records(next(offline.glob("run-*.wandb")))
        config = [r for r in records if r.WhichOneof("record_type") == "config"]
        assert any("bagnet9" in i.value_json for r in config for i in r.config.update)
    else:
        mlruns = tmp_path / "runs" / "mlruns"
        assert list(mlruns.glob("*/*/artifacts/figures/heatmaps_step*.png"))
        assert list(mlruns.glob("*/*/artifacts/config.yaml"))
        assert (next(mlruns.glob("*/*/params/model.tag"))).read_text() == "bagnet9_w4"
        assert not list(mlruns.glob("*/*/params/experiments.*"))   # params: model, data, trainer, seed


def test_a_bad_logger_name_is_one_error_line(tmp_path, run_in_process, run_cli, tiny_overrides, one_error_line):
    r = run_cli("logger=[csv,tensorbord]", "device=cpu", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "unknown logger 'tensorbord'" in line and "tensorboard" in line
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="unknown logger 'tb'"):     # in-process (bagnet.run.run, pipelines)
        run_in_process(*tiny_overrides, "logger=tb")
    for ok in (["logger=[csv,tensorboard]"], ["-m", "logger=csv,mlflow"], ["logger.csv={}"], ["logger=[]"]):
        check_overrides(ok)


def test_a_bad_key_or_a_missing_package_is_refused_before_anything_is_written(tmp_path, monkeypatch, run_in_process,
                                                                              tiny_overrides):
    with pytest.raises(ConfigError, match=r"logger.tensorboard.flush_sec: unknown key; valid: flush_secs"):
        check({"tensorboard": {"flush_sec": 3}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb package: pip install 'bagnet-repro\[wandb\]'"):
        run_in_process(*tiny_overrides, "logger=wandb")
    assert not (tmp_path / "runs").exists()


def test_the_library_imports_no_logger_package(repo_root):
    code = ("import sys, bagnet, bagnet.train, bagnet.loggers, bagnet.run; "
            "print(sorted(m for m in ('tensorboard', 'wandb', 'mlflow', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_logger_config_is_a_backend(repo_root):
    names = {p.stem for p in (repo_root / "configs" / "logger").glob("*.yaml")}
    assert names == set(PACKAGES)
    from bagnet.loggers import LOGGERS
    assert set(LOGGERS) == names


def test_the_figure_is_a_warning_when_it_fails_and_does_not_count_bad_images(tmp_path, capsys, make_image_folder,
                                                                             make_tiny_bagnet):
    from bagnet.data import build_data
    from bagnet.loggers import Logger, RunLog, heatmap_figure

    class Figures(Logger):
        def __init__(self):
            self.figures = []

        def log_figure(self, tag, figure, step):
            self.figures.append((tag, step))
    backend = Figures()
    log = RunLog([backend], step=7)
    log.figure("broken", lambda: 1 / 0)
    assert "warning: logging the broken figure failed (ZeroDivisionError" in capsys.readouterr().out
    data = build_data({"name": "imagefolder", "root": str(make_image_folder(tmp_path / "f", bad={"val": 3})),
                       "image_size": 32}, seed=0)
    before = data.val.bad_images
    log.figure("heatmaps", heatmap_figure, make_tiny_bagnet(num_classes=2), data.val, data.classes, data.mean, data.std)
    assert backend.figures == [("heatmaps", 7)] and data.val.bad_images == before
    [data.val[i] for i in range(len(data.val))]      # the same reads by the run itself do count
    assert data.val.bad_images == before + 3
