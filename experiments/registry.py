"""The registered experiments: a name, the schema of its ``signatures.<name>`` block, its run function and
the figures its tables determine.

The schema (a dataclass) is the only home of an experiment's defaults: :func:`store_schemas` puts every
schema into Hydra's ConfigStore as ``signatures/schema``, and ``configs/signatures/default.yaml`` states
only where the suite's defaults differ. The suite runner (:mod:`experiments.suite`) runs any list of
registered experiments on any models and data: ``make demo``, ``make signatures`` and the paper pipeline.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Callable, Mapping

from bagnet.errors import ConfigError
from bagnet.result import Result

# the modules that register an experiment when imported (their order is the suite's default order)
MODULES = ("scrambling", "additivity", "error_overlap", "sensitivity", "explain", "precision", "patch_robustness")


@dataclass(frozen=True)
class Experiment:
    name: str
    schema: type                                   # the dataclass of ``signatures.<name>``
    run: Callable[..., Result]                     # run(models, data, cfg) or run(predictions, classes, cfg)
    inputs: str = "models"                         # "models" | "predictions" (per-image predictions)
    per_model: bool = False                        # one model at a time gives the same rows: resumable per model
    units: Callable | None = None                  # (models, cfg) -> [suite.Unit]: how else it splits into units
    figures: Callable[[Mapping, Mapping], dict] | None = None   # (tables, raw) -> figures of combined units
    summary: str = ""                              # one line: what it measures (docs, README tables)
    version: int = 1                               # part of every saved unit's key: bump when the protocol changes


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    REGISTRY[experiment.name] = experiment
    return experiment


def registered() -> dict[str, Experiment]:
    """Every registered experiment (importing the modules that register them)."""
    for module in MODULES:
        importlib.import_module(f"experiments.{module}")
    return dict(REGISTRY)


def get(name: str) -> Experiment:
    experiments = registered()
    if name not in experiments:
        raise ConfigError(f"unknown experiment '{name}'; registered: {', '.join(experiments)}")
    return experiments[name]


# keys an experiment takes from the run (``seed=``, ``device=``), not from its ``signatures.<name>`` block
RUN_KEYS = ("seed", "device")


def config_node(name: str, schema: type) -> type:
    """``schema`` without :data:`RUN_KEYS`, as the ConfigStore node of ``signatures.<name>``; a module-level
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


def signatures_schema() -> type:
    """The dataclass of the whole ``signatures`` block: one field per registered experiment."""
    fields = [(name, node, field(default_factory=node))
              for name, node in ((n, config_node(n, e.schema)) for n, e in registered().items())]
    return _module_level(make_dataclass("SignaturesConfig", fields))


def _module_level(cls: type) -> type:
    """Make a generated class importable as ``experiments.registry.<name>`` (pickle finds it there)."""
    cls.__module__, cls.__qualname__ = __name__, cls.__name__
    globals()[cls.__name__] = cls
    return cls


def store_schemas() -> None:
    """``signatures/schema`` in Hydra's ConfigStore (configs/signatures/default.yaml extends it)."""
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(group="signatures", name="schema", node=signatures_schema())
