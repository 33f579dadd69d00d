"""The suite runner: registered experiments (:mod:`experiments.registry`) on any models and data, each
(experiment, unit) saved as soon as it is done and reused while its key is unchanged.

One code path serves every pipeline: ``task=<experiment>``, the config-stated pipelines
(:mod:`experiments.pipeline`: ``make signatures``, ``make reproduce-imagenette``), ``make demo`` and
``make reproduce-paper``. A unit is one model for experiments whose rows do
not depend on the other models (``per_model``), one target for sensitivity, else all models together.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import shutil
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn

import bagnet
from bagnet import io
from bagnet.config import as_dict
from bagnet.data import build_data
from bagnet.errors import ConfigError
from bagnet.identity import data_key, is_release, model_key
from bagnet.provenance import git_commit
from bagnet.result import Result
from bagnet.checks import check_writable
from bagnet.context import check_run_data
from bagnet.train import evaluate_model
from bagnet.utils import jsonable, refused_content

from . import registry
from .inputs import SplitData


def units(experiment: registry.Experiment, models: Mapping[str, nn.Module], cfg: Mapping) -> list[registry.Unit]:
    if experiment.units is not None:
        return experiment.units(models, cfg)
    if experiment.per_model:
        return [registry.Unit(name, [name]) for name in models]
    return [registry.Unit("all", list(models))]


def run_experiment(experiment: registry.Experiment | str, models: Mapping[str, nn.Module], data, cfg: Mapping,
                   predictions: Mapping[str, pd.DataFrame] | None = None, store: "Store | None" = None,
                   key: Mapping | None = None, part: str | None = None) -> Result:
    """``experiment`` on ``models`` (or their ``predictions``) and ``data`` (:class:`SplitData`, or a
    Dataset), unit by unit; with a ``store`` each unit is saved (in ``<part>/<unit>``, part = the
    experiment's name unless given) and reused under ``key`` (what else the result depends on: data,
    model identities) plus the unit's config."""
    exp = registry.get(experiment) if isinstance(experiment, str) else experiment
    parts = units(exp, models, cfg)
    results = []
    for u in parts:
        ucfg = {**cfg, **u.cfg}

        def compute(u=u, ucfg=ucfg):
            extra = {"cache": store.cache(part or exp.name) if store is not None else memory_cache()} if exp.cached else {}
            if exp.inputs == "predictions":
                return exp.run({m: predictions[m] for m in u.models}, getattr(data, "classes", None), ucfg, **extra)
            return exp.run({m: models[m] for m in u.models}, data, ucfg, **extra)
        if store is None or (exp.stored is not None and not exp.stored(ucfg)):
            results.append(compute())
        else:
            # where the weights were found is not what they are: a release is named by its hash-checked file
            # (the models' keys), so a moved weights_dir reuses every unit
            ukey = {**dict(key or {}), "experiment": exp.name, "version": exp.version,
                    "cfg": {k: v for k, v in ucfg.items() if k != "weights_dir"},
                    "models": {m: (key or {}).get("model_keys", {}).get(m) for m in u.models}}
            ukey.pop("model_keys", None)
            results.append(store.unit(part or exp.name, u.name, ukey, compute))
    out = results[0] if len(results) == 1 else combine(exp, results)
    if store is not None:   # raw.json names the commit that computed each stored unit (a reused one: older code)
        out.units = {f"{part or exp.name}/{u.name}": store.commits[f"{part or exp.name}/{u.name}"]
                     for u in parts if f"{part or exp.name}/{u.name}" in store.commits}
    return out


def combine(exp: registry.Experiment, results: list[Result]) -> Result:
    """One Result from its units': tables concatenated in unit order, raw dicts merged (the first unit's
    value of a key that is not a dict), figures redrawn from the combined tables (any other: the first unit's of
    its name)."""
    import matplotlib.pyplot as plt
    tables = {name: pd.concat([r.tables[name] for r in results if name in r.tables], ignore_index=True)
              for name in dict.fromkeys(n for r in results for n in r.tables)}
    raw: dict = {}
    for r in results:
        for k, v in (r.raw or {}).items():
            if isinstance(v, dict) and isinstance(raw.get(k), dict):
                raw[k] = {**raw[k], **v}
            else:
                raw.setdefault(k, v)
    figures = exp.figures(tables, raw) if exp.figures else {}
    kept: dict = {}     # figures the tables do not determine (e.g. example images): the first unit's of each name
    for r in results:
        for name, fig in r.figures.items():
            if name not in figures:
                kept.setdefault(name, fig)
    for r in results:                                 # the units' own figures, redrawn above
        for name, fig in r.figures.items():
            if not isinstance(fig, (str, Path)) and kept.get(name) is not fig:
                plt.close(fig)
    figures = {**kept, **figures}
    return Result(tables=tables, figures=figures, raw=raw, summary=" | ".join(r.summary for r in results if r.summary),
                  header=results[0].header)


# ---------------------------------------------------------------- what a task's experiments run on
def experiment_cfg(ctx, name: str) -> dict:
    """``experiments.<name>`` plus the run's keys (:data:`experiments.registry.RUN_KEYS`): seed, device, weights_dir."""
    return {**as_dict(ctx.cfg.experiments.get(name, {})), "seed": ctx.cfg.seed, "device": str(ctx.device),
            "weights_dir": ctx.cfg.get("weights_dir")}


def model_specs(ctx) -> dict:
    """``cfg.models`` (name -> run dir / checkpoint / model config), or the config's own model (None: the
    ``model=`` config, from ``checkpoint=`` when given; :meth:`bagnet.context.Context.model`)."""
    return dict(ctx.cfg.models) or {ctx.cfg.model.tag: None}


class Predictions(Mapping):
    """Per-image predictions on ``cfg.split`` of every model of ``specs``, made when first read: a run's saved
    ones when there, else computed with ``model_of(name)`` and, with a ``store``, kept (a resumed pipeline of
    released models does not evaluate 50,000 images again)."""

    def __init__(self, ctx, specs: Mapping, model_of: Callable[[str], nn.Module], store: "Store | None" = None,
                 model_keys: Mapping | None = None):
        self.ctx, self.specs, self.model_of, self.store = ctx, dict(specs), model_of, store
        self.model_keys = dict(model_keys or {})
        self._made: dict[str, pd.DataFrame] = {}

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._made:
            self._made[name] = self._make(name)
        return self._made[name]

    def _make(self, name: str) -> pd.DataFrame:
        cfg, spec = self.ctx.cfg, self.specs[name]
        saved = Path(str(spec)) / "eval" / f"predictions_{cfg.split}.csv.gz" if isinstance(spec, str) else None
        if saved is not None and saved.is_file():   # the run's own predictions: only of these very images
            check_run_data(spec, cfg, f"models.{name}", same_images=True)
            return pd.read_csv(saved)

        def compute() -> dict:
            df = evaluate_model(self.model_of(name), self.ctx.data, [cfg.split], as_dict(cfg), self.ctx.device)[cfg.split][1]
            return {c: torch.from_numpy(df[c].to_numpy().copy()) if pd.api.types.is_numeric_dtype(df[c])
                    else [str(v) for v in df[c]] for c in df.columns}   # tensors and strings: weights_only loads them
        if self.store is None:
            columns = compute()
        else:
            key = {**data_key(cfg), "model": self.model_keys.get(name), "code": code_digest()}
            columns = self.store.cache("predictions")(name, key, compute)
        return pd.DataFrame({c: v.numpy() if isinstance(v, torch.Tensor) else v for c, v in columns.items()})


def split_data(ctx, split: str | None = None, image_size: int | None = None) -> SplitData:
    """``cfg.split`` of the run's data, its images resized to ``image_size`` (None: ``data.image_size``)."""
    data = ctx.data
    if image_size is not None and image_size != int(data.image_size):
        resized = OmegaConf.merge(ctx.cfg.data, {"image_size": image_size})
        data = build_data(resized, seed=ctx.cfg.seed)
    return SplitData(data.split(split or ctx.cfg.split), list(data.classes), tuple(data.mean), tuple(data.std),
                     int(data.image_size))


def run_experiments(ctx, names, specs: Mapping, hook: Callable | None = None,
                    seed: int | None = None) -> dict[str, Result]:
    """The registered experiments ``names`` on the models ``specs`` (name -> run dir / checkpoint / model
    config) and ``cfg.split``, one Result each. Units are saved in the run dir only when every model's weights
    are known: a trained run (keyed by its checkpoint's content) or a release (by its file); a bare model
    config may be random weights. ``hook``: a forward pre-hook put on every model (e.g. a TF32 guard);
    ``seed``: the experiments' own seed instead of the run's (runs trained at other seeds are read with the
    same scrambles, occluder placements and image picks as the first)."""
    cfg = ctx.cfg
    settings = {name: {**experiment_cfg(ctx, name), **({"seed": seed} if seed is not None else {})} for name in names}
    trained = {m: (s if s is not None else cfg.checkpoint or None) for m, s in specs.items()}
    key = {**data_key(ctx.cfg), "model_keys": {m: model_key(s, ctx.cfg.get("weights_dir")) for m, s in trained.items()}}
    known = all(isinstance(s, str) or is_release(s) for s in trained.values())
    store = Store(Path(cfg.run_dir), progress=False) if known else None
    experiments = [registry.get(name) for name in names]       # an unknown name fails before any work
    for e in experiments:     # and every key outside its range (the image side's too), before a model is loaded
        registry.check(e, settings[e.name], ctx.data.classes, int(ctx.data.image_size), list(specs))
    if store is not None:
        check_writable(Path(cfg.run_dir), "run_dir")
    def load(name: str) -> nn.Module:
        model = ctx.model(name, specs[name]).to(ctx.device).eval()
        if hook is not None:
            model.register_forward_pre_hook(hook)
        return model
    models = {name: load(name) for name in specs} if any(e.inputs == "models" for e in experiments) else {}
    preds = Predictions(ctx, specs, lambda name: models[name] if name in models else load(name), store,
                        key["model_keys"]) if any(e.inputs == "predictions" for e in experiments) else None
    return {e.name: run_experiment(e, models or {m: None for m in specs},
                                   split_data(ctx, image_size=settings[e.name].get("image_size")),
                                   settings[e.name], predictions=preds, store=store, key=key)
            for e in experiments}


def task(ctx) -> Result:
    """A registered experiment as a task (``task=<name>``) on ``cfg.models`` and ``cfg.split``, its units
    saved in the run dir (an interrupted run resumes; a finished unit is reused while its key holds)."""
    return run_experiments(ctx, [ctx.cfg.task], model_specs(ctx))[ctx.cfg.task]


def memory_cache() -> Callable:
    """The cache of an unstored run: within the run only."""
    kept: dict = {}

    def cached(name: str, key: Mapping, compute: Callable[[], dict]) -> dict:
        k = (name, json.dumps(jsonable(key), sort_keys=True))
        if k not in kept:
            kept[k] = compute()
        return kept[k]
    return cached


# ---------------------------------------------------------------- resumable units
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(jsonable(obj), sort_keys=True).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def code_digest() -> str:
    """SHA-256 of the computing code: every .py file of the library and of this experiment layer, by path and
    content. A stored unit is reused only under the same digest: code that changed recomputes it, whatever
    its ``version`` or the commit state says (a unit records the commit that computed it, for the reader)."""
    h = hashlib.sha256()
    for package in (Path(bagnet.__file__).parent, Path(__file__).parent):
        for f in sorted(package.rglob("*.py")):
            h.update(f"{package.name}/{f.relative_to(package)}".encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class Store:
    """Saved (part, unit) Results under ``root``; a unit is reused only if its key (config, data, models and
    the code's digest) is unchanged. A unit is written whole: into a staging folder, then renamed into place,
    under its part's lock, so a kill or a second command never leaves a unit of mixed origins."""

    def __init__(self, root: Path, progress: bool = True):
        self.root, self.progress = Path(root), progress
        self.computed: list[str] = []
        self.reused: list[str] = []
        self.seconds: dict[str, float] = {}
        self.commits: dict[str, str] = {}            # part/unit -> the commit that computed it
        self.commit = git_commit()                   # now: the code this process runs (HEAD may move meanwhile)

    def unit(self, part: str, name: str, key: dict, compute: Callable[[], Result]) -> Result:
        d = self.root / part / _slug(name)
        key = jsonable({**key, "code": code_digest()})
        with io.dir_lock(d.parent, "experiment units"):
            saved = self._load(d / "unit.pt")
            if saved is not None and saved.get("key") == key:
                self.reused.append(f"{part}/{name}")
                self.commits[f"{part}/{name}"] = saved.get("commit", "?")
                return _result_from_plain(saved["result"], d)
            started = time.perf_counter()
            result = compute()
            self.seconds[f"{part}/{name}"] = time.perf_counter() - started
            self.commits[f"{part}/{name}"] = commit = self.commit
            self._write(d, key, commit, result, self.seconds[f"{part}/{name}"])
            self.computed.append(f"{part}/{name}")
            return _result_from_plain(_plain_result(result), d)

    def cache(self, part: str) -> Callable:
        """``cache(name, key, compute)``: tensors ``compute()`` made, kept in ``<part>/_cache/<name>.pt`` and
        returned again while ``key`` is unchanged (an experiment's work inside one unit: a killed run keeps it)."""
        def cached(name: str, key: Mapping, compute: Callable[[], dict]) -> dict:
            path = self.root / part / "_cache" / f"{_slug(name)}.pt"
            key = jsonable(key)
            saved = self._load(path)        # called inside a unit of this part: under the part's lock already
            if saved is not None and saved.get("key") == key:
                return saved["value"]
            value = compute()
            io.save_checkpoint({"key": key, "value": value}, path)     # atomic: whole or absent
            return value
        return cached

    @staticmethod
    def _load(marker: Path) -> dict | None:
        """A saved unit (tensors and plain containers only: weights_only, like every file this suite reads);
        None when there is none, or when it is damaged (said in a note: it is computed again)."""
        if not marker.is_file():
            return None
        try:
            saved = torch.load(marker, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ConfigError(f"refused to load {marker}: {refused_content(e)}; remove it (the unit is then "
                              "computed again)") from None
        except Exception as e:   # empty, truncated, not a torch file: whatever the reader raises
            print(f"note: {marker} is damaged ({type(e).__name__}: {str(e)[:80]}); computing the unit again",
                  flush=True)
            return None
        return saved if isinstance(saved, dict) else None

    @staticmethod
    def _write(d: Path, key: dict, commit: str, result: Result, wall_s: float) -> None:
        staging = d.parent / f".{d.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        for tname, df in result.tables.items():   # readable copies beside unit.pt
            if len(df) > 500:
                io.write_predictions(df, staging / f"{tname}.csv.gz")
            else:
                io.write_table(df, staging / tname)
        for fname, fig in result.figures.items():
            io.write_figure(fig, staging / f"figure_{_slug(fname)}")
        io.write_json({"key": key, "commit": commit, "raw": result.raw,
                       "wall_s": wall_s}, staging / "unit.json")
        io.save_checkpoint({"key": key, "commit": commit, "result": _plain_result(result)}, staging / "unit.pt")
        old = d.parent / f".{d.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if d.exists():
            os.replace(d, old)
        os.replace(staging, d)     # a kill before this line leaves no unit (computed again), never half of one
        shutil.rmtree(old, ignore_errors=True)


def _plain_result(result: Result) -> dict:
    """A unit's Result as plain containers (weights_only-loadable): tables column by column with their
    dtypes, raw as JSON values, figures by name (their files lie beside unit.pt)."""
    tables = {name: {"columns": [str(c) for c in df.columns], "data": [df[c].tolist() for c in df.columns],
                     "dtypes": [str(t) for t in df.dtypes]} for name, df in result.tables.items()}
    header = result.header if isinstance(result.header, str) else ""
    return {"tables": tables, "raw": json.loads(json.dumps(jsonable(result.raw))), "summary": result.summary,
            "figures": list(result.figures), "header": header}


def _result_from_plain(plain: dict, unit_dir: Path) -> Result:
    tables = {name: pd.DataFrame(dict(zip(t["columns"], t["data"])), columns=t["columns"]).astype(
        dict(zip(t["columns"], t["dtypes"]))) for name, t in plain["tables"].items()}
    figures = {name: unit_dir / f"figure_{_slug(name)}" for name in plain["figures"]}
    return Result(tables=tables, figures=figures, raw=plain["raw"], summary=plain["summary"],
                  header=plain.get("header", ""))
