"""The one entry point: ``python -m bagnet.run task=<task> model=<model> data=<data> [overrides]``.

Thin on purpose: compose the config, run ``bagnet.tasks.run_task``. Bad input (unknown model or
dataset, a typo in an override, a missing checkpoint or dataset) ends with one line on stderr and
exit code 2, before anything is written.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def user_errors() -> tuple[type[BaseException], ...]:
    from .data import DataError
    from .models.weights import WeightsError
    return (ValueError, FileNotFoundError, DataError, WeightsError, KeyError)


def explain_compose_error(e: Exception) -> str:
    """Hydra's multi-line composition errors, as one line that says what is valid."""
    msg = str(e)
    if "Could not find" in msg and "Available options" in msg:
        missing = msg.split("Could not find '", 1)[1].split("'", 1)[0]          # e.g. model/bagnet34
        group, _, option = missing.rpartition("/")
        # the indented lines after "Available options in ...", up to "Config search path:"
        lines = msg.split("Available options in", 1)[1].splitlines()[1:]
        options = [ln.strip() for ln in itertools.takewhile(lambda ln: ln.startswith((" ", "\t")), lines)]
        return f"unknown {group or 'config'} '{option}'; available: {', '.join(options)}"
    if "Could not override" in msg or "not in struct" in msg:
        key = msg.split("'", 2)[1] if "'" in msg else "?"
        return f"unknown config key '{key}' (check the spelling; add a new key with +{key}=...)"
    return _one_line(e)


def check_overrides(argv: list[str]) -> str | None:
    """Compose the config once up front (first value of each sweep) to catch bad overrides early."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    overrides = []
    for a in argv:
        if a.startswith("-"):
            continue
        key, eq, value = a.partition("=")
        if eq and "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        overrides.append(f"{key}{eq}{value}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
            from .tasks import TASKS
            if cfg.task not in TASKS:
                return f"unknown task '{cfg.task}'; valid: {', '.join(sorted(TASKS))}"
    except Exception as e:  # hydra raises several types; all are user errors here
        return explain_compose_error(e)
    finally:
        GlobalHydra.instance().clear()
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig):
    from .tasks import run_task
    try:
        return run_task(cfg)
    except user_errors() as e:
        if os.environ.get("BAGNET_DEBUG"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)


def cli() -> None:
    if not any(a in ("-h", "--help", "--hydra-help", "--info", "--cfg", "-c") or a.startswith("--cfg")
               for a in sys.argv[1:]):
        err = check_overrides(sys.argv[1:])
        if err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)
    main()


if __name__ == "__main__":
    cli()
