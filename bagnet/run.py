"""The runner: ``python -m bagnet.run task=<task> model=<model> data=<data> [overrides]`` (or ``bagnet-run``).

The top layer. Hydra composes the config; :func:`run_task` validates it, sets up the device and the
process group once, finds the task's function by its dotted path in ``cfg.tasks``
(configs/config.yaml), runs it, and writes the returned Result with provenance to ``cfg.out_dir``.
No module of the library imports this one, and none imports ``experiments/``: the config names them.

Errors the user can fix (:class:`bagnet.errors.UserError`) end with one line on stderr and exit code 2;
Hydra reports a bad override or an unknown config option itself; anything else is a bug and keeps its
traceback. ``BAGNET_DEBUG=1`` shows the traceback of user errors too.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import hydra
import torch
from hydra.utils import get_method
from omegaconf import DictConfig

from . import io
from .config import CONFIG_DIR, as_dict, compose, validate
from .distributed import cleanup, init_distributed
from .engine import resolve_device
from .errors import ConfigError, UserError
from .provenance import provenance
from .result import Result
from .tasks import Context


def task_function(cfg: DictConfig):
    if cfg.task not in cfg.tasks:
        raise ConfigError(f"unknown task '{cfg.task}'; valid: {', '.join(sorted(cfg.tasks))}")
    return get_method(cfg.tasks[cfg.task])


def run_task(cfg: DictConfig, overrides: Sequence[str] = ()) -> Result:
    """Validate ``cfg``, run its task once, write the Result (``overrides``: the command line's, from
    which pipelines compose their sub-runs)."""
    fn = task_function(cfg)
    validate(cfg)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    ctx = Context(cfg, device, dist, list(overrides))
    try:
        started = time.perf_counter()
        result = fn(ctx)
        wall_s = time.perf_counter() - started
        if dist.is_main:
            where = cfg.run_dir
            if not result.is_empty():
                io.write_result(result, ctx.out_dir,
                                provenance(config=as_dict(cfg), device=device, seed=cfg.seed, wall_s=wall_s))
                where = ctx.out_dir
            print(f"done: {cfg.task}: {result.summary} ({wall_s / 60:.1f} min) -> {where}", flush=True)
    finally:
        cleanup()
    return result


def run(*overrides: str) -> Result:
    """``python -m bagnet.run <overrides>`` in-process (tests, notebooks)."""
    return run_task(compose(overrides), overrides)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    try:
        run_task(cfg, HydraConfig.get().overrides.task)
    except UserError as e:
        if os.environ.get("BAGNET_DEBUG"):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
