"""Experiment loggers: the ``logger=`` config group. ``csv`` (the default), ``tensorboard``, ``wandb`` (offline) and
``mlflow`` (a local file store); several at once with ``logger=[csv,tensorboard]``.

Every backend has four calls: ``log_scalars(step, {name: value})``, ``log_config(config)``,
``log_figure(tag, figure, step)`` and ``close()``. The training loop (:func:`bagnet.train.fit`) talks to one
:class:`RunLog`, which counts the step, fans the calls out and defers what must wait for a checkpoint. A backend
imports its package when a run asks for it (the extras ``bagnet-repro[tensorboard]``, ``[wandb]``, ``[mlflow]``),
never when this module is imported; :func:`check` refuses a missing package or an unknown name before a run starts.

What is logged: per optimizer step ``train/loss``, ``train/top1``, ``train/lr`` (the step's), ``train/img_per_s``
(the epoch's so far); per epoch ``epoch/train_loss``, ``epoch/train_top1``, ``epoch/img_per_s``, ``epoch/lr``,
``epoch/number``, ``val/top1``, ``val/top5``; the resolved config once per process; at the end of a BagNet's training,
a figure of exact heatmaps of a few validation images (:func:`heatmap_figure`). The per-epoch ``metrics.csv`` and
``metrics.json`` of the run dir are written whatever the loggers.

The step axis is the run's global optimizer step (saved in the checkpoint as ``global_step``), so a resumed run
continues the same curves, and no point is logged twice: ``csv`` and ``tensorboard`` get each step as it happens
and, when a run resumes, drop what a killed process logged after the checkpoint it resumes from (TensorBoard's
``purge_step``); W&B and MLflow cannot delete points, so they get an epoch's points once its checkpoint is written.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import io
from .errors import ConfigError

LOG_DIR = "logs"                 # inside the run dir
STATE_FILE = "loggers.json"      # the W&B run id and the MLflow run, so a resumed run logs into the same run


class Logger:
    """A backend. ``live``: it can drop the points logged after a checkpoint, so it gets each step at once."""
    live = True
    wants_figures = True
    options: dict[str, Any] = {}  # the keys of its config (configs/logger/<name>.yaml) and their defaults

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def log_config(self, config: Mapping) -> None:
        pass

    def log_figure(self, tag: str, figure, step: int) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        pass


class CSVLogger(Logger):
    """``<run_dir>/logs/steps.csv``: one row per point (step, name, value). Resuming drops the rows after the
    checkpoint's step (and a row cut by a kill)."""
    wants_figures = False

    def __init__(self, run_dir: Path, start_step: int, options: Mapping, state: dict):
        self.path = Path(run_dir) / LOG_DIR / "steps.csv"
        kept = ["step,name,value\n"]
        if self.path.is_file():
            for line in self.path.read_text().splitlines(keepends=True)[1:]:
                parts = line.rstrip("\n").rsplit(",", 1)[0].split(",", 1)
                if line.endswith("\n") and len(parts) == 2 and parts[0].isdigit() and int(parts[0]) <= start_step:
                    kept.append(line)
        io.write_text("".join(kept), self.path)

    def log_scalars(self, step, scalars):
        io.append_text("".join(f"{step},{k},{float(v)!r}\n" for k, v in scalars.items()), self.path)


class TensorBoardLogger(Logger):
    """Event files in ``<run_dir>/logs/tensorboard`` (``tensorboard --logdir runs`` shows every run)."""
    options = {"flush_secs": 30}

    def __init__(self, run_dir: Path, start_step: int, options: Mapping, state: dict):
        from torch.utils.tensorboard import SummaryWriter
        # purge_step: TensorBoard hides the points at or after it that an earlier (killed) process wrote
        self.writer = SummaryWriter(str(Path(run_dir) / LOG_DIR / "tensorboard"), purge_step=start_step + 1,
                                    flush_secs=int(options["flush_secs"]))
        self.step = start_step

    def log_scalars(self, step, scalars):
        for k, v in scalars.items():
            self.writer.add_scalar(k, float(v), step)

    def log_config(self, config):
        import yaml
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.writer.add_text("config", "".join("    " + line for line in text.splitlines(keepends=True)), self.step)

    def log_figure(self, tag, figure, step):
        self.writer.add_image(tag, figure_rgb(figure), step, dataformats="HWC")

    def close(self, ok=True):
        self.writer.close()


class WandbLogger(Logger):
    """A W&B run, offline by default: ``<run_dir>/logs/wandb/offline-run-*`` (``wandb sync`` uploads them). Every
    process of a run logs into the same W&B run id."""
    live = False
    options = {"project": "bagnet-repro", "entity": None, "group": None, "tags": [], "mode": "offline"}

    def __init__(self, run_dir: Path, start_step: int, options: Mapping, state: dict):
        import wandb
        run_id = state.setdefault("wandb", {}).setdefault("id", uuid.uuid4().hex[:8])
        self.run = wandb.init(project=options["project"], entity=options["entity"], group=options["group"],
                              tags=list(options["tags"]) or None, name=run_name(run_dir), id=run_id,
                              dir=str(Path(run_dir) / LOG_DIR), mode=options["mode"], resume="allow",
                              settings=wandb.Settings(console="off", silent=True))

    def log_scalars(self, step, scalars):
        self.run.log({k: float(v) for k, v in scalars.items()}, step=step)

    def log_config(self, config):
        self.run.config.update(dict(config), allow_val_change=True)

    def log_figure(self, tag, figure, step):
        import wandb
        self.run.log({tag: wandb.Image(figure_rgb(figure))}, step=step)

    def close(self, ok=True):
        self.run.finish(exit_code=0 if ok else 1)


class MLflowLogger(Logger):
    """An MLflow run in ``tracking_uri`` (default: the file store ``<runs_dir>/mlruns``; ``mlflow ui
    --backend-store-uri runs/mlruns``), tagged with the run dir; a resumed run logs into the same MLflow run."""
    live = False
    options = {"tracking_uri": None, "experiment_name": "bagnet-repro"}

    def __init__(self, run_dir: Path, start_step: int, options: Mapping, state: dict):
        uri = str(options["tracking_uri"] or Path(run_dir) / LOG_DIR / "mlruns")
        if ":" not in uri.split("/")[0]:          # a plain path: a file store
            uri = Path(uri).expanduser().resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3.x keeps the file store in maintenance mode and refuses it unless told otherwise
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient(tracking_uri=uri)
        saved = state.get("mlflow") or {}
        self.run_id, self.new = saved.get("run_id"), False
        if saved.get("tracking_uri") != uri or not self._exists(self.run_id):
            name = options["experiment_name"]
            exp = self.client.get_experiment_by_name(name)
            try:
                exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            except Exception:   # noqa: BLE001  another process created it first
                exp_id = self.client.get_experiment_by_name(name).experiment_id
            run = self.client.create_run(exp_id, run_name=run_name(run_dir),
                                         tags={"bagnet.run_dir": str(Path(run_dir).resolve())})
            self.run_id, self.new = run.info.run_id, True
            state["mlflow"] = {"tracking_uri": uri, "run_id": self.run_id}
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _exists(self, run_id) -> bool:
        try:
            return run_id is not None and self.client.get_run(run_id).info.lifecycle_stage == "active"
        except Exception:   # noqa: BLE001  a run id the store does not know
            return False

    def log_scalars(self, step, scalars):
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):                     # MLflow's limit per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_config(self, config):
        import yaml
        from mlflow.entities import Param
        self.client.log_text(self.run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")
        if self.new:     # params (what defines a training run) are immutable: set once per MLflow run
            run = {k: config[k] for k in ("model", "data", "trainer", "seed") if k in config}
            params = [Param(k, str(v)[:6000]) for k, v in flatten(run).items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_figure(self, tag, figure, step):
        self.client.log_image(self.run_id, figure_rgb(figure), artifact_file=f"figures/{tag}_step{step:07d}.png")

    def close(self, ok=True):
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")


LOGGERS: dict[str, type[Logger]] = {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger,
                                    "mlflow": MLflowLogger}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}   # name -> the module it needs


def check(selected: Mapping | None) -> None:
    """The ``logger`` block of a config: known loggers, known keys, their packages installed (ConfigError)."""
    for name, options in dict(selected or {}).items():
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger '{name}'; valid: {', '.join(LOGGERS)}")
        unknown = sorted(set(dict(options or {})) - set(LOGGERS[name].options))
        if unknown:
            raise ConfigError(f"logger.{name}.{unknown[0]}: unknown key; valid: {', '.join(LOGGERS[name].options)}")
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package: pip install 'bagnet-repro[{name}]' "
                              f"(or pip install {package})")


def check_overrides(overrides) -> None:
    """Refuse ``logger=<unknown>`` on a command line in one line, before Hydra's several-line message."""
    names = []
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep and key.lstrip("+~") == "logger":
            # one name, a list [csv,tensorboard], or a sweep (-m logger=csv,tensorboard)
            names += re.findall(r"[^\[\],\s]+", value)
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ConfigError(f"unknown logger '{bad[0]}'; valid: {', '.join(LOGGERS)} (several: logger=[csv,tensorboard]; "
                          "none: logger=[])")


def run_name(run_dir: Path) -> str:
    """``<data>/<model tag>/<run name>``: the last three parts of the run dir."""
    return "/".join(Path(run_dir).resolve().parts[-3:])


def flatten(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def figure_rgb(figure) -> np.ndarray:
    """A matplotlib Figure as a uint8 [H, W, 3] array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class RunLog:
    """The loggers of one training process, and its global step. ``on_step`` (called by
    :func:`bagnet.engine.train_one_epoch` after each optimizer step) advances the step; ``epoch`` logs an
    epoch's scalars; ``commit`` (after the checkpoint) hands the deferred backends what they waited for."""

    def __init__(self, backends: list[Logger] = (), step: int = 0, every: int = 1):
        self.backends, self.step, self.every = list(backends), int(step), max(1, int(every))
        self.pending: list[tuple[int, dict]] = []

    @classmethod
    def open(cls, selected: Mapping | None, run_dir: str | Path, step: int = 0, every: int = 1,
             enabled: bool = True) -> "RunLog":
        """The loggers named in ``selected`` (a config's ``logger`` block), continuing at ``step``."""
        if not enabled or not selected:
            return cls([], step, every)
        check(selected)
        run_dir = Path(run_dir)
        state_path = run_dir / LOG_DIR / STATE_FILE
        # a run that starts from scratch (step 0) starts a new W&B / MLflow run too
        state = json.loads(state_path.read_text()) if step > 0 and state_path.is_file() else {}
        backends = []
        try:
            for name, options in dict(selected).items():
                backends.append(LOGGERS[name](run_dir, step, {**LOGGERS[name].options, **dict(options or {})},
                                              state))
        except BaseException:
            cls(backends, step).close(ok=False)
            raise
        if state:
            io.write_json(state, state_path)
        return cls(backends, step, every)

    @property
    def wants_figures(self) -> bool:
        return any(b.wants_figures for b in self.backends)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for b in self.backends:
            if b.live:
                b.log_scalars(step, scalars)
        if any(not b.live for b in self.backends):
            self.pending.append((step, dict(scalars)))

    def on_step(self, scalars: Mapping[str, float]) -> None:
        self.step += 1
        if self.backends and self.step % self.every == 0:
            self.log_scalars(self.step, {f"train/{k}": v for k, v in scalars.items()})

    def epoch(self, metrics: Mapping[str, float]) -> None:
        """An epoch's row of metrics.csv, at the step that ended it."""
        names = {"train_loss": "epoch/train_loss", "train_acc": "epoch/train_top1", "val_top1": "val/top1",
                 "val_top5": "val/top5", "lr": "epoch/lr", "train_images_per_s": "epoch/img_per_s", "epoch": "epoch/number"}
        if self.backends:
            self.log_scalars(self.step, {n: metrics[k] for k, n in names.items() if k in metrics})

    def commit(self) -> None:
        for b in self.backends:
            if not b.live:
                for step, scalars in self.pending:
                    b.log_scalars(step, scalars)
        self.pending.clear()

    def log_config(self, config: Mapping) -> None:
        for b in self.backends:
            b.log_config(config)

    def log_figure(self, tag: str, figure, step: int | None = None) -> None:
        """``figure``: a matplotlib Figure (None: nothing to log)."""
        for b in self.backends if figure is not None else ():
            if b.wants_figures:
                b.log_figure(tag, figure, self.step if step is None else step)

    def figure(self, tag: str, make, *args) -> None:
        """Log ``make(*args)`` (a Figure or None); a figure that fails is a warning, never a failed training run."""
        try:
            self.log_figure(tag, make(*args))
        except Exception as e:  # noqa: BLE001  whatever plotting or a backend raises
            print(f"warning: logging the {tag} figure failed ({type(e).__name__}: {e})", flush=True)

    def close(self, ok: bool = True) -> None:
        """Points not committed are dropped: they lie after the last checkpoint, and the resumed run logs them."""
        self.pending.clear()
        errors = []
        for b in self.backends:
            try:
                b.close(ok)
            except Exception as e:  # noqa: BLE001  close the others, then report
                errors.append(e)
        self.backends = []
        if errors:
            raise errors[0]


def heatmap_figure(model, dataset, classes, mean, std, num_images: int = 4):
    """Exact heatmaps (relative evidence) of the predicted class for ``num_images`` validation images spread over
    the split (no random draw), or None when the model is not a BagNet."""
    import torch

    from .data.names import display_names
    from .heatmaps import heatmap
    from .models import is_bagnet
    from .viz import heatmap_figure as figure
    if not is_bagnet(model) or len(dataset) == 0:
        return None
    idx = sorted({i * len(dataset) // num_images for i in range(num_images)})
    bad = getattr(dataset, "_bad", None)             # an image folder's count of undecodable images (summary.json)
    seen = bad.value if bad is not None else None
    items = [dataset[i] for i in idx]
    if bad is not None:                              # reading images for a figure is not the run meeting them
        bad.value = seen
    images, labels = torch.stack([x for x, _ in items]), [int(y) for _, y in items]
    p = next(model.parameters())
    model.eval()
    with torch.no_grad():
        preds = model(images.to(p.device, p.dtype)).argmax(1).cpu()
        maps = heatmap(model, images, target=preds, evidence="relative").float().cpu()
    names = display_names(classes)
    titles = [f"{names[y]}: predicted {names[int(c)]}" for y, c in zip(labels, preds)]
    return figure(images, maps, titles, mean, std)
