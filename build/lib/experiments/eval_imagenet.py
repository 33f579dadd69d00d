"""make eval-imagenet: top-1/top-5 of pretrained 1000-way models (the authors' BagNets, torchvision's
baselines) on an ImageNet split, beside the published numbers.

Weights come from ``eval_imagenet.weights_dir`` (local copies of the release files, found by their
release names) or the hash-checked download / torch hub cache. The data must be preprocessed as each
release expects (its default config's mean/std), which is checked before any image is read.
"""
from __future__ import annotations


import pandas as pd

from bagnet.checkpoint import model_kwargs
from bagnet.config import as_dict
from bagnet.errors import ConfigError
from bagnet.models import create_model, default_cfg
from bagnet.models.weights import find_local
from bagnet.result import Result
from bagnet.train import evaluate_model

from . import published
from .registry import register_pipeline

# top-1, top-5 (fractions). BagNets: the paper; baselines: torchvision's model docs (experiments/published.yaml).
PAPER_IMAGENET = {m: (top1, top5) for m, (top1, top5, _) in published.imagenet_accuracy().items()}


def local_weights(release_file: str, weights_dir: str | None) -> str | None:
    """A local copy of ``release_file`` in ``weights_dir`` (:func:`bagnet.models.weights.find_local`, the one
    finder of weight files), as a string for a model config's ``weights``."""
    found = find_local(release_file, weights_dir)
    return str(found) if found else None


@register_pipeline("eval_imagenet")
def task(ctx) -> Result:
    """Top-1/top-5 of every model of ``cfg.eval_imagenet.models`` on ``cfg.split``."""
    cfg, data = ctx.cfg, ctx.data
    if data.num_classes != 1000:
        raise ConfigError(f"eval_imagenet needs 1000-way labels; data={cfg.data.name} has {data.num_classes} "
                          "classes (use data.label_space=imagenet1k)")
    rows, raw = [], {}
    for label, spec in cfg.eval_imagenet.models.items():
        spec = as_dict(spec)
        release = default_cfg(spec["name"], **model_kwargs(spec))
        if tuple(release["mean"]) != tuple(data.mean) or tuple(release["std"]) != tuple(data.std):
            raise ConfigError(f"{label}'s weights expect mean {release['mean']} / std {release['std']}, "
                              f"data={cfg.data.name} normalises with {data.mean} / {data.std}")
        spec["weights"] = spec.get("weights") or local_weights(release["file"], cfg.eval_imagenet.weights_dir)
        model = create_model(**spec, pretrained=True, num_classes=1000)
        metrics, _ = evaluate_model(model, data, [cfg.split], as_dict(cfg), ctx.device)[cfg.split]
        pub = PAPER_IMAGENET.get(label, (None, None))
        rows.append({"model": label, "top1": metrics["top1"], "top5": metrics["top5"], "n": metrics["n"],
                     "published top1": pub[0], "published top5": pub[1]})
        raw[label] = {"metrics": metrics, "weights": spec["weights"] or "download"}
    df = pd.DataFrame(rows)
    header = lambda prov: (  # noqa: E731
        f"Pretrained models on `{cfg.data.name}` ({cfg.split} split, root `{cfg.data.root}`), "
        f"{prov['wall_s'] / 60:.1f} min on {prov['device']}. Published: BagNets from Brendel & Bethge (2019), "
        "baselines from torchvision's model documentation.")
    return Result(tables={"imagenet": df}, raw=raw, header=header,
                  summary=" | ".join(f"{r['model']} {r['top1']:.3f}/{r['top5']:.3f}" for r in rows))
