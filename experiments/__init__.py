"""The experiment layer: the paper's signatures, the explanations and the experiments beyond the paper, and
the pipelines built from them. Importing this package imports every module in it, and each
registers what it defines (:mod:`experiments.registry`): the registry is the one list of the suite's units of
work, and a new experiment is one module.

Experiments (``run(models, data, cfg) -> Result``, never writing files):

* :mod:`experiments.scrambling`       Sec. 4.1: tile scrambling and texturised images (top-1/top-5 vs clean)
* :mod:`experiments.additivity`       Sec. 4.2: interaction of occluding two image parts vs their distance
* :mod:`experiments.error_overlap`    Sec. 4.3: class-wise accuracies and per-image errors shared by models
* :mod:`experiments.sensitivity`      Sec. 4.4: how well BagNet heatmaps predict a CNN's occlusion sensitivity
* :mod:`experiments.explain`          exact BagNet heatmaps; the most class-predictive patches
* :mod:`experiments.accuracy`         top-1/top-5 with intervals and paired contrasts
* :mod:`experiments.texture`          Sec. 4: accuracy on Gatys-texturised and tile-scrambled images
* :mod:`experiments.precision`        how fp32 / bf16 / fp16 / TF32 change the answers
* :mod:`experiments.patch_robustness` certified robustness to one adversarial patch

The pipeline (``task(ctx) -> Result``): :mod:`experiments.pipeline`, a pipeline stated in a config: ``make demo``,
``make reproduce-table1``, ``make signatures``, ``make eval-imagenet``, ``make reproduce-imagenette``, ``make
reproduce-paper``; their reports :mod:`experiments.demo`, :mod:`experiments.table1`, :mod:`experiments.paper`.
"""
import importlib
import pkgutil

# Every module of this package is imported, so a module that registers is all a new experiment, pipeline or
# report needs; the registry (experiments.registry), filled by these imports, is the one list.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from . import registry, suite  # noqa: E402


def tasks() -> dict:
    """Task name -> function(ctx) -> Result: every registered experiment (run by :func:`experiments.suite.task`)
    and every pipeline."""
    return {**{name: suite.task for name in registry.REGISTRY}, **registry.PIPELINES}
