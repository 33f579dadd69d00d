"""The registry: every unit of work of the suite, by name. Two kinds:

* an **experiment**: a name, the schema of its ``experiments.<name>`` block, ``run(models, data, cfg) ->
  Result`` and the figures its tables determine. :mod:`experiments.suite` runs any of them on any models
  and data, unit by unit, saved and reused; ``task=<name>`` runs one.
* a **pipeline**: ``task(ctx) -> Result`` that trains or loads models and runs experiments (``make demo``,
  Table 1, the paper, ``task=pipeline`` for a pipeline stated in a config).

The modules that register are imported by ``experiments/__init__.py`` (the one list); the runner's tasks
are derived from this registry (:func:`experiments.tasks`), never named as dotted strings.

The schema (a dataclass) is the only home of an experiment's defaults: :func:`store_schemas` puts every
schema into Hydra's ConfigStore as ``experiments/schema`` (the library calls it before every compose), and
``configs/experiments/default.yaml`` states only where the suite's defaults differ.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Callable, Mapping

from bagnet.config import add_schema_store
from bagnet.errors import ConfigError
from bagnet.result import Result

from .keys import check_keys, typed_cfg


@dataclass
class Unit:
    """Part of an experiment computed on its own: ``models`` with ``cfg`` over the experiment's config."""
    name: str
    models: list[str]
    cfg: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    name: str
    schema: type                                   # the dataclass of ``experiments.<name>``
    run: Callable[..., Result]                     # run(models, data, cfg) or run(predictions, classes, cfg)
    inputs: str = "models"                         # "models" | "predictions" (per-image predictions)
    per_model: bool = False                        # one model at a time gives the same rows: resumable per model
    units: Callable | None = None                  # (models, cfg) -> [Unit]: how else it splits into units
    figures: Callable[[Mapping, Mapping], dict] | None = None   # (tables, raw) -> figures of combined units
    summary: str = ""                              # one line: what it measures (docs, README tables)
    version: int = 1                               # part of every saved unit's key: bump when the protocol changes
    # (cfg, classes, image_size): refuse a config before anything trains, beyond the ranges of its keys (:func:`check`)
    check: Callable[[Mapping, list, int | None], None] | None = None
    stored: Callable[[Mapping], bool] | None = None        # (cfg): may its units be saved and reused? (default yes)
    # run(..., cache=) receives the suite's cache of intermediate products (cache(name, key, compute) -> dict of
    # tensors, kept beside its units and reused while the key holds): work worth keeping inside one unit
    cached: bool = False
    # (cfg) -> the model labels its keys name (e.g. sensitivity's targets): each must be a model it runs on, refused
    # before anything trains (:func:`check` with ``models``)
    models_named: Callable[[Mapping], list] | None = None


REGISTRY: dict[str, Experiment] = {}
PIPELINES: dict[str, Callable] = {}          # name -> task(ctx) -> Result
REPORTS: dict[str, Callable] = {}            # name -> report(ctx, result, trained) -> Result: a pipeline's checks
                                             # and document (``pipeline.report``)


def register(experiment: Experiment) -> Experiment:
    if experiment.name in REGISTRY or experiment.name in PIPELINES:
        raise ValueError(f"'{experiment.name}' is registered twice")
    REGISTRY[experiment.name] = experiment
    return experiment


def register_pipeline(name: str):
    """Decorator: ``task(ctx) -> Result`` as the pipeline ``task=<name>``."""
    def add(fn: Callable) -> Callable:
        if name in REGISTRY or name in PIPELINES:
            raise ValueError(f"'{name}' is registered twice")
        PIPELINES[name] = fn
        return fn
    return add


REPORT_CHECKS: dict[str, Callable] = {}      # name -> check(cfg): refuse the report's own settings before training


def register_report(name: str, check: Callable | None = None):
    """Decorator: ``report(ctx, result, trained) -> Result`` as ``pipeline.report=<name>``: it receives the
    pipeline's Result (a part per experiment) and its trained runs (label -> (sub-run Context, summary)).
    ``check(cfg)``: refuses the report's own settings before anything trains."""
    def add(fn: Callable) -> Callable:
        if name in REPORTS:
            raise ValueError(f"report '{name}' is registered twice")
        REPORTS[name] = fn
        if check is not None:
            REPORT_CHECKS[name] = check
        return fn
    return add


def report(name: str, cfg=None) -> Callable:
    """The report ``name``; with ``cfg``, its settings checked first (a ConfigError before any work)."""
    if name not in REPORTS:
        raise ConfigError(f"unknown pipeline.report '{name}'; registered: {', '.join(REPORTS) or 'none'}")
    if cfg is not None and name in REPORT_CHECKS:
        REPORT_CHECKS[name](cfg)
    return REPORTS[name]


def registered() -> dict[str, Experiment]:
    """Every registered experiment, in the order ``experiments/__init__.py`` imports their modules."""
    return dict(REGISTRY)


def get(name: str) -> Experiment:
    experiments = registered()
    if name not in experiments:
        raise ConfigError(f"unknown experiment '{name}'; registered: {', '.join(experiments)}")
    return experiments[name]


def check(experiment: Experiment | str, cfg: Mapping, classes=(), image_size: int | None = None,
          models: list | None = None) -> dict:
    """Refuse a config of ``experiment`` before any work (before models are trained or loaded): unknown keys, wrong
    types, a value outside its key's range (declared beside the key in its ``Config``, :func:`experiments.keys.
    ranged`; the bounds on the image side with ``image_size``, the side of the images the models see, or the
    experiment's own ``image_size`` key when set), then the experiment's own ``check``, and with ``models`` (the
    labels it will run on) every label its keys name. Every error is one ConfigError naming ``experiments.<name>``.
    Returns the typed config."""
    exp = get(experiment) if isinstance(experiment, str) else experiment
    where = f"experiments.{exp.name}"
    typed = typed_cfg(exp.schema, cfg, where)
    if typed.get("image_size") is not None:
        if exp.inputs == "predictions":
            raise ConfigError(f"{where}.image_size: {exp.name} reads the models' predictions, made at data.image_size; "
                              "leave it null")
        image_size = typed["image_size"]
    check_keys(exp.schema, typed, where, image_size)
    if exp.check is not None:
        exp.check(typed, list(classes or []), image_size)
    if models is not None and exp.models_named is not None:
        unknown = [m for m in dict.fromkeys(exp.models_named(typed)) if m not in models]
        if unknown:
            raise ConfigError(f"{where}: {unknown} are not models of this run ({', '.join(map(str, models))})")
    return typed


# keys an experiment takes from the run (``seed=``, ``device=``), not from its ``experiments.<name>`` block
RUN_KEYS = ("seed", "device", "weights_dir")


def config_node(name: str, schema: type) -> type:
    """``schema`` without :data:`RUN_KEYS`, as the ConfigStore node of ``experiments.<name>``; a module-level
    class of this module, so composed configs pickle (sweeps, the SLURM launcher)."""
    hints = typing.get_type_hints(schema)
    cls_name = "".join(w.title() for w in name.split("_")) + "Node"
    node = make_dataclass(cls_name, [(f.name, hints[f.name], _default(f)) for f in dataclasses.fields(schema)
                                     if f.name not in RUN_KEYS])
    return _module_level(node)


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory)
    return field(default=f.default)


def experiments_schema() -> type:
    """The dataclass of the whole ``experiments`` block: one field per registered experiment."""
    fields = [(name, node, field(default_factory=node))
              for name, node in ((n, config_node(n, e.schema)) for n, e in registered().items())]
    return _module_level(make_dataclass("ExperimentsConfig", fields))


def _module_level(cls: type) -> type:
    """Make a generated class importable as ``experiments.registry.<name>`` (pickle finds it there)."""
    cls.__module__, cls.__qualname__ = __name__, cls.__name__
    globals()[cls.__name__] = cls
    return cls


def store_schemas() -> None:
    """``experiments/schema`` in Hydra's ConfigStore (configs/experiments/default.yaml extends it)."""
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(group="experiments", name="schema", node=experiments_schema())


add_schema_store(store_schemas)   # the library's compose stores the experiments' schemas too
