"""The runner: ``python -m bagnet.run task=<task> model=<model> data=<data> [overrides]`` (or ``bagnet-run``).

The top layer: it imports the library and the experiment layer, and nothing imports it. Hydra composes the
config; :func:`run_task` validates it, sets up the device and the process group once, finds the task by
name (the library's ``train`` and ``eval``, then every experiment and pipeline of the registry,
:func:`experiments.tasks`), runs it, and writes the returned Result with provenance to ``cfg.out_dir``.

Errors the user can fix (:class:`bagnet.errors.UserError`) end with one line on stderr and exit code 2;
Hydra reports a bad override or an unknown config option itself; anything else is a bug and keeps its
traceback. ``BAGNET_DEBUG=1`` shows the traceback of user errors too.

A results folder (``out_dir``) is written under its lock and replaces results of the same config only:
results that another config made are refused unless ``overwrite=true`` (keys that cannot change results,
:data:`RESULTS_IGNORED`, are not compared), files the suite did not write are refused always, and a
replacement is announced. The folder is checked before the task runs, and again under the lock.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

import hydra
import torch
from omegaconf import DictConfig

import experiments

from . import io
from .config import CONFIG_DIR, as_dict, compose, store_schemas, validate
from .distributed import cleanup, init_distributed
from .engine import keep_freed_cpu_memory, resolve_device
from .errors import ConfigError, Interrupted, UserError
from .identity import identity_diff, results_identity
from .loggers import check_overrides
from .provenance import git_commit, model_provenance, provenance
from .result import Result
from .checks import check_writable
from .context import Context
from .tasks import evaluate, train

def tasks() -> dict:
    """Task name -> function(ctx) -> Result: the library's own, then the registry's experiments and pipelines."""
    return {"train": train, "eval": evaluate, **experiments.tasks()}


def task_function(cfg: DictConfig):
    known = tasks()
    if cfg.task not in known:
        raise ConfigError(f"unknown task '{cfg.task}'; valid: {', '.join(sorted(known))}")
    return known[cfg.task]


def run_task(cfg: DictConfig, overrides: Sequence[str] = ()) -> Result:
    """Validate ``cfg``, run its task once, write the Result (``overrides``: the command line's, from
    which pipelines compose their sub-runs)."""
    fn = task_function(cfg)
    validate(cfg)
    if cfg.task != "train":     # a training run's files are its run dir (checked by fit_run), not out_dir
        check_results_dir(cfg, Path(cfg.out_dir))   # refuse now, not after the task has run
    if cfg.task not in ("train", "eval"):     # a results folder that cannot be written, too (eval writes its run dir)
        check_writable(Path(cfg.out_dir), "out_dir")
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_cpu_memory()     # up to 1.5x faster CPU training of the BagNets (engine.py says why)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    ctx = Context(cfg, device, dist, list(overrides))
    commit = git_commit()         # the code this process runs: HEAD may move while a long task runs
    try:
        started = time.perf_counter()
        result = fn(ctx)
        wall_s = time.perf_counter() - started
        if dist.is_main:
            where = cfg.run_dir
            if not result.is_empty():
                with io.dir_lock(ctx.out_dir, "results"):
                    note = check_results_dir(cfg, ctx.out_dir)
                    if note:
                        print(note, flush=True)
                    used = as_dict(cfg)["models"] or ({cfg.model.tag: str(cfg.checkpoint)} if cfg.get("checkpoint")
                                                      else {})
                    models = {"models": model_provenance(used, cfg.seed)} if used else {}
                    io.write_result(result, ctx.out_dir, provenance(config=as_dict(cfg), device=device, seed=cfg.seed,
                                                                     wall_s=wall_s, git_commit=commit, **models))
                where = ctx.out_dir
            print(f"done: {cfg.task}: {result.summary} (this command: {wall_s / 60:.1f} min) -> {where}", flush=True)
    finally:
        cleanup()
    return result





def check_results_dir(cfg: DictConfig, out_dir: Path) -> str | None:
    """Refuse results in ``out_dir`` made by another config (unless ``overwrite=true``); the note to
    print when they are replaced, None when there are none. Files the suite did not write (not in the folder's
    manifest: the user's own) are refused whatever ``overwrite`` says."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={out_dir} is a file, not a folder; choose another out_dir=")
    foreign = io.foreign_files(out_dir)
    if foreign:
        shown = ", ".join(str(p.relative_to(out_dir)) for p in foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{out_dir} holds files this suite did not write ({shown}); move them, or choose "
                          "another out_dir= (overwrite=true replaces only the suite's own results)")
    raw = io.saved_results(out_dir)
    if raw is None:
        return None
    try:
        prov = json.loads(raw.read_text()).get("provenance") or {}
    except (OSError, ValueError):
        prov = {}
    saved = prov.get("config")
    # keys only the new config has are newer defaults, not another experiment: ignored
    diff = (identity_diff(results_identity(saved), results_identity(as_dict(cfg)), added=False, missing="<absent>")
            if isinstance(saved, dict) else [f"{raw} records no config"])
    made = f"made {prov.get('time', '?')} by commit {str(prov.get('git_commit', '?'))[:12]}"
    shown = "; ".join(d if len(d) <= 160 else d[:157] + "..." for d in diff[:3])
    shown += f"; {len(diff) - 3} more" if len(diff) > 3 else ""
    if diff and not cfg.get("overwrite", False):
        raise ConfigError(f"{out_dir} holds results of another config ({shown}; {made}); "
                          "pass overwrite=true to replace them, or out_dir=... to write elsewhere")
    differs = f"; config differs, overwrite=true: {shown}" if diff else ""
    return f"replacing the results in {out_dir} ({made}{differs})"


# Swept keys that name a run dir already (runs/<task>/<data>/<model.tag>/<run_name>; run_name holds the seed)
NAMED_BY_PATH = ("task", "model", "data", "seed", "run_name", "model.patch_size", "model.width")


def sweep_run_name(run_name: str, job_overrides: Sequence[str], command_line: Sequence[str]) -> str:
    """A multirun job's run name: ``run_name`` plus this job's value of every swept key that the run dir does
    not name already (``-m trainer.lr=0.1,0.05``: ``seed0,trainer.lr=0.1``), as Hydra's ``override_dirname``
    names job dirs, so every sweep point gets a run dir of its own. A ``run_name=`` on the command line wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_overrides([a for a in command_line if "=" in a])
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()} - set(NAMED_BY_PATH)
    if not swept or any(o.key_or_group == "run_name" for o in parsed):
        return run_name
    values = dict(o.split("=", 1) for o in job_overrides if "=" in o)
    return ",".join([run_name] + [f"{k}={io.safe_name(values[k])}" for k in sorted(swept) if k in values])


def run(*overrides: str) -> Result:
    """``python -m bagnet.run <overrides>`` in-process (tests, notebooks)."""
    return run_task(compose(overrides), overrides)


def _terminate(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (a scheduler, kill) ends a run as Ctrl-C does: one line, files intact


def main() -> None:
    """``python -m bagnet.run`` / ``bagnet-run``: the schemas first, then Hydra composes and runs."""
    store_schemas()
    try:
        check_overrides(sys.argv[1:])    # logger=<unknown>: one line here, not Hydra's list of options
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    _hydra_main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            cfg.run_name = sweep_run_name(cfg.run_name, HydraConfig.get().overrides.task, sys.argv[1:])
        run_task(cfg, HydraConfig.get().overrides.task)
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again: finished runs and parts are reused", file=sys.stderr,
              flush=True)
        sys.exit(130)
    except UserError as e:
        if os.environ.get("BAGNET_DEBUG"):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(130 if isinstance(e, Interrupted) else 2)


if __name__ == "__main__":
    main()
