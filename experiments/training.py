"""Models a pipeline trains: each label -> model entry composed as its own ``task=train`` run (reused when
finished, resumed when interrupted), and the estimate of the time left before anything trains."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

from bagnet.checkpoint import model_kwargs
from bagnet.config import as_dict
from bagnet.errors import WeightsError
from bagnet.models.releases import check_weights
from bagnet.tasks import finished_summary, fit_run
from bagnet.estimate import estimate_train_seconds


def model_overrides(spec) -> list[str]:
    """A pipeline's model entry as Hydra overrides: ``"bagnet33"`` -> ``[model=bagnet33]``;
    ``{option: small_cnn, width: 16, trainer: {epochs: 8}}`` -> ``[model=small_cnn, model.width=16,
    trainer.epochs=8]``."""
    spec = {"option": spec} if isinstance(spec, str) else dict(spec)
    out = [f"model={spec.pop('option')}"]
    for key, value in spec.items():
        if isinstance(value, Mapping):
            out += [f"{key}.{k}={_value(v)}" for k, v in value.items()]
        else:
            out.append(f"model.{key}={_value(value)}")
    return out


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def sub_runs(ctx, models: Mapping, *extra: str) -> dict:
    """label -> the ``task=train`` Context of every ``label -> model entry`` (this run's other overrides but its
    folders; ``extra`` ones, e.g. ``seed=1``, replace this run's value of that key)."""
    # the pipeline's own folders (run_dir=, out_dir=) are not its trainings': each training has a run dir of its own
    keys = {o.split("=", 1)[0] for o in extra} | {"run_dir", "out_dir"}
    base = [o for o in ctx.overrides
            if not o.lstrip("+~").startswith("model") and o.split("=", 1)[0].lstrip("+~") not in keys]
    return {label: replace(ctx, overrides=base).with_overrides("task=train", *extra, *model_overrides(spec))
            for label, spec in models.items()}


def estimate_training(ctx, runs: Mapping[str, Sequence]) -> float:
    """Print, before anything trains, how long the runs still to train will take (a few measured steps of
    each; finished runs cost nothing); ``runs``: label -> (model entries, extra overrides). Returns seconds."""
    total, lines = 0.0, []
    for label, (models, extra) in runs.items():
        for name, sub in sub_runs(ctx, models, *extra).items():
            if finished_summary(sub.cfg, Path(sub.cfg.run_dir)) is not None:
                continue
            est = estimate_train_seconds(as_dict(sub.cfg), sub.data, sub.device)
            total += est["total_s"]
            lines.append(f"  {name}{label}: {est['total_s'] / 60:.0f} min ({est['epochs']} epochs x "
                         f"{est['steps_per_epoch']} steps x {est['s_per_step']:.2f} s)")
    if lines:
        print(f"estimate: {len(lines)} run(s) to train, about {total / 60:.0f} min on this machine as it is now "
              "(finished runs are reused; an interrupted one resumes):\n" + "\n".join(lines), flush=True)
    return total


def train_models(ctx, models: Mapping, *extra: str) -> dict:
    """Train (or reuse, or resume) every ``label -> model entry`` as ``task=train`` with this run's
    other overrides (``extra`` ones, e.g. ``seed=1``, replace this run's value of that key); returns
    label -> (the sub-run's Context, its summary)."""
    return {label: (sub, fit_run(sub)) for label, sub in sub_runs(ctx, models, *extra).items()}


def check_all_weights(ctx, models: Mapping) -> dict:
    """Fetch the weights of every pretrained ``label -> model entry`` before anything trains; all missing files
    in one error, one line each (each file's url and where to put it above it, on stdout). Returns label ->
    release file name (None: random init)."""
    files, missing = {}, []
    for label, sub in sub_runs(ctx, models).items():
        m = as_dict(sub.cfg.model)
        files[label] = None
        if m.get("pretrained") or m.get("weights"):
            try:
                files[label] = check_weights(m["name"], **model_kwargs(m))
            except WeightsError as e:
                missing.append(f"{label}: {e}")
    if missing:
        init = ctx.cfg.get("init")
        where = f"init={init}: " if init else ""
        print(f"{where}weights files missing:\n" + "\n".join(f"  {m}" for m in missing), flush=True)
        scratch = (", or train from random weights with init=scratch (make reproduce-table1 INIT=scratch)"
                   if init == "imagenet" else "")
        raise WeightsError(f"{where}{len(missing)} of {len(models)} weights files missing, nothing was trained "
                           f"(missing: {', '.join(m.split(':')[0] for m in missing)}; their urls are listed above): "
                           f"put them in $BAGNET_WEIGHTS_DIR{scratch}")
    return files
