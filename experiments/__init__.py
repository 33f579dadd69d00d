"""The paper's four "signatures" of bag-of-local-features behaviour (Brendel & Bethge, ICLR 2019, Sec. 4).

Each module has ``run(...) -> bagnet.result.Result`` and never writes files:

* :mod:`experiments.scrambling`    tile scrambling and texturised images (top-1/top-5 vs clean)
* :mod:`experiments.additivity`    interaction of occluding two image parts vs their distance
* :mod:`experiments.error_overlap` class-wise accuracies and per-image errors shared by models
* :mod:`experiments.sensitivity`   how well BagNet heatmaps / attribution maps predict a CNN's occlusion sensitivity

Signatures: ``run(models, dataset, cfg, classes=None, mean=None, std=None)`` for the first, second and
fourth; ``run(predictions, classes, cfg)`` for error_overlap. Every parameter is a key of ``cfg``
(a Mapping) with a default in the module's ``DEFAULTS``.
"""
