"""A pipeline stated in a config (``task=pipeline``): which models to train (or reuse, or resume), which to
load, and which registered experiments to run on them, each into a folder of its own.

    pipeline:
      train: {BagNet-33: bagnet33, ResNet-50: resnet50}   # label -> model entry, trained on this config's data
      experiments: [accuracy, scrambling, heatmaps]        # registered experiments, in order
    models: {VGG-16: /path/to/run}                         # label -> run dir / model config, loaded as is

``make signatures`` and ``make reproduce-imagenette`` are such configs (configs/experiment/). Nothing here
names an experiment: what runs is the config's list, through :func:`experiments.suite.run_experiments`.
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bagnet.config import add_schema_store, as_dict, untyped_node
from bagnet.engine import Tf32Guard, numerics_state, tf32
from bagnet.errors import ConfigError
from bagnet.result import Result

from . import registry
from .keys import typed_cfg
from .training import check_all_weights, estimate_training, train_models
from .registry import register_pipeline
from .suite import combine, run_experiments, experiment_cfg


@dataclass
class PipelineConfig:
    # label -> model entry (a model option, or {option: ..., <model key>: value, trainer: {...}}), trained as
    # task=train with this run's data and trainer; a finished run is reused, an interrupted one resumes
    train: dict[str, Any] = field(default_factory=dict)
    # these labels of ``train`` are trained again at each of ``extra_seeds`` (labelled "<label> seed <s>"): the
    # seed-to-seed spread, which the per-image intervals of one run do not contain
    seed_models: list[str] = field(default_factory=list)
    extra_seeds: list[int] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)   # registered experiments, each a folder of the result
    report: Optional[str] = None                            # a registered report: the checks and the README
    estimate: bool = True                                   # print the training time left before training
    # TF32 for CUDA matmuls / cuDNN convolutions during the experiments: null = torch's setting as it is; false =
    # off for all of them (fp32 answers, e.g. to compare with published fp32 numbers) and restored after
    tf32: Optional[bool] = None


# pipeline/schema in Hydra's ConfigStore (configs/pipeline/default.yaml extends it): every key exists, a typo is
# refused at compose; types are checked by typed_cfg in one line, as for the trainer (bagnet.config.untyped_node)
PipelineNode = untyped_node(PipelineConfig, "PipelineNode")
PipelineNode.__module__ = __name__        # importable by name: a composed config pickles (sweeps, launchers)


def store_schema() -> None:
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(group="pipeline", name="schema", node=PipelineNode)


add_schema_store(store_schema)


@register_pipeline("pipeline")
def task(ctx) -> Result:
    """Train ``pipeline.train``, then run ``pipeline.experiments`` on those runs and ``cfg.models``."""
    p = typed_cfg(PipelineConfig, as_dict(ctx.cfg).get("pipeline"), "pipeline")
    refuse_before_training(ctx, p)
    report = registry.report(p["report"]) if p["report"] else None
    seeded = {label: p["train"][label] for label in p["seed_models"]} if p["extra_seeds"] else {}
    seed_runs = {seed: seed_overrides(ctx, seed) for seed in p["extra_seeds"] if seeded}
    releases = check_all_weights(ctx, p["train"]) if p["train"] else {}   # every missing file named before training
    if p["train"] and p["estimate"] and ctx.dist.is_main:
        estimate_training(ctx, {"": (p["train"], []), **{f" seed {s}": (seeded, o) for s, o in seed_runs.items()}})
    trained = train_models(ctx, p["train"])
    for seed, extra in seed_runs.items():
        trained.update({seed_label(label, seed): run for label, run in train_models(ctx, seeded, *extra).items()})
    runs = {label: str(sub.cfg.run_dir) for label, (sub, _) in trained.items()}
    seeds = {seed_label(label, seed): {"model": label, "seed": seed} for seed in seed_runs for label in seeded}
    # models= may name the trained runs too (task=heatmaps experiment=demo reads them), but nothing else
    clash = sorted(k for k, v in ctx.cfg.models.items() if k in runs and str(v) != runs[k])
    if clash:
        raise ConfigError(f"{clash} are in pipeline.train and in models with another run; give each label once")
    specs = {**{k: v for k, v in runs.items() if k not in seeds},
             **{k: v if isinstance(v, str) else as_dict(v) for k, v in ctx.cfg.models.items() if k not in runs}}
    if not specs:
        raise ConfigError("the pipeline has no models: set pipeline.train and/or models")
    # tf32 false: every model's forwards are watched too (a forward with TF32 on is refused, and counted otherwise)
    guard = Tf32Guard() if p["tf32"] is False else None
    with nullcontext() if p["tf32"] is None else tf32(p["tf32"]):
        numerics = numerics_state()
        parts = run_experiments(ctx, p["experiments"], specs, hook=guard)
        # the runs at other seeds: on their own seed's data (a split may depend on the seed), with the experiments'
        # randomness (scrambles, picks) of the first seed, so that their spread is the training's alone
        for seed, extra in seed_runs.items():
            again = run_experiments(ctx.with_overrides(*extra), p["experiments"],
                                    {seed_label(label, seed): runs[seed_label(label, seed)] for label in seeded},
                                    hook=guard, seed=ctx.cfg.seed)
            parts = {name: combine(registry.get(name), [parts[name], again[name]]) for name in parts}
    numerics["restored_after"] = numerics_state()
    if guard is not None:
        numerics["guarded_forwards"] = guard.forwards
    tables = {"training": training_table(trained)} if trained else {}
    result = Result(tables=tables, parts=parts, raw={"models": specs, "numerics": numerics, "seed_runs": seeds,
                                                   "release_files": releases},
                    summary=f"{len(specs)} models; ran {', '.join(parts)}")
    return report(ctx, result, trained) if report else result


def refuse_before_training(ctx, p: dict) -> None:
    """Every mistake that needs no training, refused before any: an unknown experiment, a key outside its range, a
    model label an experiment's keys name but the pipeline lacks, the report's own settings, seed models that are
    not trained, extra seeds with experiments that name models (the seed runs get the experiments among themselves)."""
    if not p["experiments"]:
        raise ConfigError("pipeline.experiments is empty; name registered experiments: "
                          + ", ".join(registry.registered()))
    labels = [*p["train"], *ctx.cfg.models]
    typed = {name: registry.check(name, experiment_cfg(ctx, name), ctx.data.classes, int(ctx.data.image_size), labels)
             for name in p["experiments"]}
    if p["report"]:
        registry.report(p["report"], ctx.cfg)
    if not p["extra_seeds"]:
        return
    unknown = sorted(set(p["seed_models"]) - set(p["train"]))
    if unknown:
        raise ConfigError(f"pipeline.seed_models: {unknown} are not labels of pipeline.train ({', '.join(p['train'])}); "
                          "remove them, or set pipeline.extra_seeds=[]")
    naming = [name for name, cfg in typed.items()
              if registry.get(name).models_named is not None and registry.get(name).models_named(cfg)]
    if p["seed_models"] and naming:
        raise ConfigError(f"pipeline.extra_seeds: {naming} name models by label, which the runs at other seeds "
                          "are not; leave those keys unset or set pipeline.extra_seeds=[]")


def seed_label(label: str, seed: int) -> str:
    """The label of ``label``'s run at one of ``pipeline.extra_seeds``."""
    return f"{label} seed {seed}"


def seed_overrides(ctx, seed: int) -> list[str]:
    """The overrides of a run at ``seed``: ``seed=<s>``, and a run name of its own when this config's
    ``run_name`` does not contain the seed (``run_name=x`` on the command line)."""
    extra = [f"seed={seed}"]
    if ctx.with_overrides(*extra).cfg.run_name == ctx.cfg.run_name:
        extra.append(f"run_name={ctx.cfg.run_name}-seed{seed}")
    return extra


def training_table(trained: dict) -> pd.DataFrame:
    """One row per trained model: epochs, best val top-1, the eval splits' top-1/top-5, training time (wall, which
    counts pauses and contention, and the median epoch's, the pace of an uncontended run) and how much val top-1
    rose over the last quarter of the epochs (a model still learning at the end is under-trained)."""
    rows = []
    for label, (sub, s) in trained.items():
        row = {"model": label, "epochs": s["epochs"], "best_val_top1": s["best_val_top1"],
               "train_min": s["train_wall_s"] / 60, "precision": s.get("precision"),
               "run_dir": str(Path(sub.cfg.run_dir))}
        history = Path(sub.cfg.run_dir) / "metrics.json"
        if history.is_file():
            epochs = pd.DataFrame(json.loads(history.read_text()))
            quarter = max(len(epochs) // 4, 1)
            row["median_epoch_min"] = epochs["epoch_s"].median() / 60
            row["val_top1_rise_last_quarter"] = (epochs["val_top1"].iloc[-1] - epochs["val_top1"].iloc[-1 - quarter]
                                                 if len(epochs) > quarter else float("nan"))
        for split, m in (s.get("eval") or {}).items():
            row.update({f"{split}_top1": m["top1"], f"{split}_top5": m["top5"]})
        rows.append(row)
    return pd.DataFrame(rows)
