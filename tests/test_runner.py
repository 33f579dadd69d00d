"""The Hydra runner: composition of every model x data config, training, resume, sweeps, DDP, bad input."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from bagnet import create_model
from bagnet.config import CONFIG_DIR, store_schemas, validate
from bagnet.errors import Interrupted, UserError
from bagnet.models import list_models
from bagnet.seeding import seed_everything
from bagnet.context import Context
from bagnet.tasks import fit_run

MODELS = sorted(p.stem for p in Path(CONFIG_DIR, "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in Path(CONFIG_DIR, "data").glob("*.yaml"))


def make_cfg(*overrides: str, tmp_path: Path | None = None):
    base = ["data=synthetic", "debug=fast", "device=cpu"]
    if tmp_path is not None:
        base.append(f"paths.root_dir={tmp_path}")
    store_schemas()     # what bagnet.config.compose and the runner do before composing
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=base + list(overrides))


def task_train(cfg):
    """Train ``cfg`` in-process (as ``task=train`` does) and return the run's summary."""
    return fit_run(Context(cfg))


def tiny_synthetic(*extra: str) -> list[str]:
    return ["data.samples_per_class=12", *extra]


@pytest.mark.parametrize("data", DATASETS)
def test_every_model_composes_with_every_dataset(data):
    for model in MODELS:
        cfg = make_cfg(f"model={model}", f"data={data}")
        assert cfg.model.name in list_models() and cfg.data.name == data, (model, data)
        validate(cfg)  # every interpolation resolves and trainer/data pass their schemas


@pytest.mark.parametrize("model", MODELS)
def test_one_training_step_per_model(model):
    cfg = make_cfg(f"model={model}", "bagnet_width=8")
    net = create_model(**cfg.model, num_classes=5)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(net(x).float(), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_profiles_compose():
    cpu = make_cfg("profile=cpu", "model=bagnet33")
    gpu = make_cfg("profile=gpu", "model=bagnet33")
    assert cpu.model.width == 32 and cpu.data.image_size == 112
    assert gpu.model.width == 64 and gpu.data.image_size == 224


def assert_learned_and_wrote_its_run_dir(cfg, summary: dict) -> None:
    test_top1 = summary["eval"]["test"]["top1"]
    chance = 1 / pd.read_csv(Path(cfg.run_dir) / "eval" / "predictions_test.csv.gz")["label"].nunique()
    assert test_top1 > chance + 0.25, (test_top1, chance)
    run_dir = Path(cfg.run_dir)
    for f in ("config.yaml", "provenance.json", "metrics.csv", "metrics.json", "summary.json",
              "checkpoints/last.pt", "checkpoints/best.pt", "eval/predictions_val.csv.gz"):
        assert (run_dir / f).is_file(), f
    preds = pd.read_csv(run_dir / "eval" / "predictions_test.csv.gz")
    assert {"index", "path", "label", "pred", "top5_0", "true_logit"} <= set(preds.columns)
    assert preds["index"].is_unique


def test_a_short_synthetic_run_learns_and_writes_its_run_dir(tmp_path):
    """The fast suite's learning check (seconds): three classes a colour tells apart (white '+', red and blue dots,
    green and yellow parts), 64 px, 24 steps. The seven classes at 112 px: test_short_synthetic_run_beats_chance."""
    cfg = make_cfg("model=small_cnn", "model.width=8", "trainer.epochs=4", "trainer.max_steps_per_epoch=null",
                   "trainer.batch_size=16", "trainer.optimizer=adamw", "trainer.lr=0.01", "data.image_size=64",
                   "data.classes=[local_plus,mid_rb,global_cw]", "data.samples_per_class=32", "data.val_per_class=8",
                   "data.test_per_class=16", tmp_path=tmp_path)
    assert_learned_and_wrote_its_run_dir(cfg, task_train(cfg))


@pytest.mark.slow   # minutes on 2 cores: make test-slow / test-full (CI runs both)
def test_short_synthetic_run_beats_chance(tmp_path):
    cfg = make_cfg("model=small_cnn", "model.width=16", "trainer.epochs=4", "trainer.max_steps_per_epoch=null",
                   "trainer.batch_size=32", "trainer.optimizer=adamw", "trainer.lr=0.003", tmp_path=tmp_path)
    assert_learned_and_wrote_its_run_dir(cfg, task_train(cfg))


def test_kill_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    import bagnet.train as T
    args = ["model=bagnet9", "model.width=8", "trainer.epochs=3", "trainer.max_steps_per_epoch=2",
            "trainer.batch_size=8", *tiny_synthetic()]
    whole = make_cfg(*args, "run_name=whole", tmp_path=tmp_path)
    task_train(whole)

    killed = make_cfg(*args, "run_name=killed", tmp_path=tmp_path)
    real, calls = T.train_one_epoch, {"n": 0}

    def dies_in_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # stands in for a kill mid-epoch
        return real(*a, **k)
    monkeypatch.setattr(T, "train_one_epoch", dies_in_second_epoch)
    with pytest.raises(Interrupted, match="after 1/3 epochs; run the same command again to resume"):
        task_train(killed)
    monkeypatch.setattr(T, "train_one_epoch", real)
    # a torn temp file from a write killed mid-way must not matter
    (Path(killed.run_dir) / "checkpoints" / ".last.pt.junk.tmp").write_bytes(b"\0" * 10)
    task_train(killed)

    a = torch.load(Path(whole.run_dir) / "checkpoints/last.pt", weights_only=True)
    b = torch.load(Path(killed.run_dir) / "checkpoints/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_sweep_creates_one_run_dir_per_patch_size(tmp_path, monkeypatch, run_cli, repo_root):
    r = run_cli("-m", "task=train", "model=bagnet", "model.patch_size=9,17,33", "model.width=4", "data=synthetic",
                "data.image_size=48", "data.samples_per_class=4", "data.val_per_class=2", "data.test_per_class=2",
                "debug=fast", "device=cpu", f"paths.root_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    runs = sorted(p.parent.parent.name for p in (tmp_path / "runs/train/synthetic").glob("*/*/summary.json"))
    assert runs == ["bagnet17_w4", "bagnet33_w4", "bagnet9_w4"]

    def collect_sweep(*extra: str) -> None:    # python scripts/collect_sweep.py <root> --out <dir> ..., in-process
        monkeypatch.setattr(sys, "argv", ["collect_sweep.py", str(tmp_path / "runs/train/synthetic"),
                                          "--out", str(tmp_path / "sweep"), *extra])
        runpy.run_path(str(repo_root / "scripts" / "collect_sweep.py"), run_name="__main__")
    with pytest.raises(SystemExit, match=r"no finished runs named seed\*"):   # debug runs are not the sweep's
        collect_sweep()
    with pytest.raises(SystemExit, match=r"3 smoke run\(s\) \(--allow-smoke\)"):  # debug=fast: a few steps
        collect_sweep("--run-name", "debug-seed*")
    collect_sweep("--run-name", "debug-seed*", "--allow-smoke")
    table = pd.read_csv(tmp_path / "sweep" / "sweep.csv")
    assert sorted(table["patch_size"]) == [9, 17, 33]
    assert all("trainer.max_steps_per_epoch=3" in s for s in table["smoke"])


@pytest.mark.parametrize("args, expect", [
    (["task=trian"], "unknown task 'trian'; valid:"),
    (["trainer.batch_size=-4"], "trainer.batch_size: must be >= 1"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["data=scene15", "data.on_bad_image=crash"], "data.on_bad_image: 'crash'; valid: skip, error"),
    (["model=bagnet", "model.patch_size=10", "debug=fast"], "supported: [9, 17, 33]"),
    (["task=eval", "checkpoint=/nonexistent/ckpt.pt"], "checkpoint not found"),
    (["data=scene15", "data.root=/nonexistent/scene15"], "data.root"),
])
def test_bad_input_gives_one_line(tmp_path, args, expect, run_in_process):
    """A UserError before anything runs: the runner prints it as one line (whitespace folded) with exit code 2,
    as test_a_user_error_is_one_line_with_exit_code_2 checks on the command line. In-process (no start-up)."""
    with pytest.raises(UserError) as e:
        run_in_process("debug=fast", "device=cpu", *args)
    line = " ".join(str(e.value).split())
    assert expect in line and "search path" not in line, line


@pytest.mark.parametrize("args, expect", [(["trainer.batch_size=-4"], "trainer.batch_size: must be >= 1"),
                                          (["data=scene15", "data.root=/nonexistent/scene15"], "data.root")])
def test_a_user_error_is_one_line_with_exit_code_2(tmp_path, args, expect, run_cli):
    r = run_cli(*args, "device=cpu", f"paths.root_dir={tmp_path}")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert expect in lines[0], lines[0]
    assert "search path" not in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


@pytest.mark.parametrize("args, expect", [
    (["model=bagnet34"], "Could not find 'model/bagnet34'"),
    (["data=imagenet2"], "Could not find 'data/imagenet2'"),
    (["experiment=table1", "init=scrach"], "Could not find 'init/scrach'"),
    (["task=scrambling", "experiment=signatures", "init=scrach"], "Could not find 'init/scrach'"),
    (["model.patch_sizee=9"], "Could not override 'model.patch_sizee'"),
])
def test_bad_override_is_reported_by_hydra_without_traceback(tmp_path, args, expect, compose_config):
    """Hydra refuses it while composing, with this message; on the command line Hydra prints the message without
    a traceback (test_hydra_prints_a_bad_override_without_traceback). In-process (no start-up)."""
    with pytest.raises(HydraException) as e:
        compose_config(*args, "device=cpu")
    assert expect in str(e.value), str(e.value)
    if args[0].startswith("model="):
        assert "bagnet17" in str(e.value)  # Hydra lists the available options


def test_hydra_prints_a_bad_override_without_traceback(tmp_path, run_cli):
    r = run_cli("model=bagnet34", "device=cpu", f"paths.root_dir={tmp_path}")
    assert r.returncode != 0 and "Could not find 'model/bagnet34'" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "bagnet17" in r.stderr   # Hydra lists the available options


def test_checkpoint_of_another_architecture_is_refused(tmp_path, run_in_process):
    cfg = make_cfg("model=bagnet9", "model.width=8", *tiny_synthetic(), tmp_path=tmp_path)
    task_train(cfg)
    run_dir = Path(cfg.run_dir)
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"checkpoint is for bagnet\(.*model="):     # one line, exit 2 on the CLI
        run_in_process("task=eval", "model=resnet18", f"checkpoint={run_dir}", "data=synthetic", *tiny_synthetic(),
                       "debug=fast", "device=cpu", f"run_dir={run_dir}")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, repo_root):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                        "-m", "bagnet.run", "task=train", "model=bagnet9", "model.width=4", "data=synthetic",
                        *tiny_synthetic(), "debug=fast", "device=cpu", f"paths.root_dir={tmp_path}"],
                       cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = next((tmp_path / "runs/train/synthetic").glob("*/*"))
    preds = pd.read_csv(run_dir / "eval" / "predictions_val.csv.gz")
    assert preds["index"].tolist() == list(range(len(preds)))  # every image exactly once, gathered from 2 ranks
    assert r.stdout.count("done:") == 1  # only rank 0 reports and writes


@pytest.mark.slow
def test_compiled_training_updates_and_saves_the_plain_model(tmp_path):
    """trainer.compile=true: the compiled wrapper's steps land in the plain module, which is checkpointed.
    Width 4: narrow convs segfaulted in torch 2.14.1 once inductor switched them to channels_last.
    (Not compared with eager weights: at init this net's fp32 gradients differ from fp64 ones by ~5%
    in eager mode already, so compiled vs eager agree only to that.)"""
    cfg = make_cfg("model=bagnet9", "model.width=4", "trainer.compile=true", "trainer.epochs=1",
                   "trainer.max_steps_per_epoch=2", "trainer.batch_size=8", *tiny_synthetic(), tmp_path=tmp_path)
    task_train(cfg)
    saved = torch.load(Path(cfg.run_dir) / "checkpoints/last.pt", weights_only=True)["model"]
    seed_everything(cfg.seed)  # fit() seeds, then builds: the same initial weights
    init = create_model(**cfg.model, num_classes=len(saved["fc.bias"]))
    assert set(saved) == set(init.state_dict())  # no "_orig_mod." prefixes
    unchanged = [n for n, p in init.named_parameters() if torch.equal(saved[n], p.detach())]
    assert not unchanged, unchanged


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="optional extra '.[slurm]'")
    store_schemas()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.max_num_timeout > 0  # one DDP rank per GPU; requeue resumes


def test_submitit_slurm_job_sets_torch_ranks(monkeypatch):
    pytest.importorskip("submitit", reason="optional extra '.[slurm]'")
    from bagnet.distributed import export_slurm_env
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "unset")  # so that monkeypatch removes what export_slurm_env writes
        monkeypatch.delenv(key)
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "123", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    export_slurm_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07"


def test_recalibrate_slow_bn_gives_exact_stem_statistics():
    """The stem BN (momentum 0.001) gets the exact mean over the batches; the forward stops after it."""
    from torch.utils.data import TensorDataset

    from bagnet import create_model
    from bagnet.distributed import DistInfo
    from bagnet.data import build_loader
    from bagnet.engine import Precision, recalibrate_slow_bn
    torch.manual_seed(0)
    model = create_model("bagnet9", num_classes=3, width=8)
    images = torch.randn(12, 3, 24, 24) * 2 + 0.5
    loader = build_loader(TensorDataset(images, torch.zeros(12, dtype=torch.long)), 4, False, 0, DistInfo())
    other_bn = model.layer1[0].bn1
    before = other_bn.running_mean.clone()
    calls = []
    model.fc.register_forward_hook(lambda *a: calls.append(1))
    assert recalibrate_slow_bn(model, loader, Precision(None), torch.device("cpu"), 0, batches=3) == 1
    with torch.no_grad():
        stem = model.conv2(model.conv1(images))
    expected = stem.mean(dim=(0, 2, 3))  # equal batches: the mean of batch means is the overall mean
    torch.testing.assert_close(model.bn1.running_mean, expected, rtol=1e-5, atol=1e-6)
    assert model.bn1.momentum == 0.001 and torch.equal(other_bn.running_mean, before)
    assert not calls  # nothing after the stem ran
