"""Configuration, numerics, models and resumable state of ``make reproduce-paper`` (:mod:`experiments.paper`):
the schema of the ``paper:`` config block, the published numbers, TF32 switched off and guarded, the
pretrained models loaded from release files, and the per-(part, unit) store a killed run resumes from."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bagnet.checkpoint import model_kwargs
from bagnet.engine import tf32
from bagnet.errors import ConfigError
from bagnet.models import create_model, default_cfg

from . import sensitivity
from .common import IMAGE, OCCLUDERS, ranged
from .eval_imagenet import local_weights
from .published import imagenet_accuracy, texture_top5
from .texture_synthesis import GATYS_LAYERS

PARTS = ["accuracy", "texture", "interactions", "errors", "sensitivity", "patches"]

# Published numbers (fractions) and where they come from: experiments/published.yaml, each with its source and
# whether it was verified ("abstract": the paper's abstract; "torchvision": the weights' own documented accuracy;
# "unverified": quoted in this project's issues, the paper's body text could not be read here).

PUBLISHED_ACCURACY = imagenet_accuracy()   # model -> (top1, top5, source)
PUBLISHED_TEXTURE = texture_top5()         # model -> (top-5 clean, top-5 texturised, source)


# ---------------------------------------------------------------- config (schema of `paper:`)
@dataclass
class AccuracyConfig:
    num_images: int | None = ranged(None, ge=1)      # None = the whole split
    batch_size: int = ranged(64, ge=1)


@dataclass
class TextureCfg:
    num_images: int = ranged(100, ge=1)
    steps: int = ranged(2000, ge=1)                  # Gatys et al.: L-BFGS maxiter 2000
    layers: list[str] = field(default_factory=lambda: list(GATYS_LAYERS))
    history_size: int = ranged(20, ge=1)
    lr: float = ranged(1.0, gt=0)
    chunk: int = ranged(8, ge=1)                     # textures saved every `chunk` images (resume granularity)
    scramble_grid: int = ranged(4, ge=2)             # the tile-permutation variant: g x g tiles
    num_examples: int = ranged(4, ge=0)


@dataclass
class InteractionsConfig:
    patch_sizes: list[int] = ranged([8, 16, 32], ge=1, le=IMAGE, nonempty=True)
    distance_bins: list[int] = ranged([0, 4, 8, 16, 32, 64, 128, 224], ge=0)
    pairs_per_bin: int = ranged(4, ge=1)
    num_images: int | None = ranged(100, ge=1)
    occluder: str = ranged("zero", choices=OCCLUDERS)


@dataclass
class ErrorsConfig:
    pairs: list[list[str]] | None = None   # scatter panels; None = the BagNet vs each CNN
    scatter_metric: str = ranged("top5", choices=("top1", "top5"))


@dataclass
class SensitivityConfig(sensitivity.Config):
    """The signature's own schema with the paper pipeline's defaults: epsilon-LRP added, 100 images;
    targets None = every CNN (non-BagNet model)."""
    methods: list[str] = ranged(sensitivity.METHODS[:-2] + ["lrp", "occlusion", "random"],
                                choices=sensitivity.METHODS + sensitivity.OPTIONAL_METHODS, nonempty=True)
    num_images: int | None = ranged(100, ge=1)


@dataclass
class PatchesConfig:
    classes: list[str] = field(default_factory=lambda: ["n01440764", "n02102040", "n03394916", "n03417042",
                                                        "n03888257"])
    k: int = ranged(8, ge=1)
    per_class_images: int = ranged(50, ge=1)
    distractor_images: int = ranged(1000, ge=1)      # images of other classes searched for distractors
    heatmap_images: int = ranged(8, ge=1)
    heatmap_stride: int = ranged(1, ge=1)


@dataclass
class PaperConfig:
    weights_dir: str | None = None
    models: dict[str, Any] = field(default_factory=dict)   # label -> model config (pretrained)
    texture_model: dict[str, Any] = field(default_factory=lambda: {"name": "vgg19"})
    bagnet: str = "BagNet-33"
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    progress: bool = True
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    texture: TextureCfg = field(default_factory=TextureCfg)
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)

    def __post_init__(self):
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown parts {unknown}; valid: {PARTS}")


# ---------------------------------------------------------------- numerics: TF32 off
def numerics_state() -> dict:
    """The TF32 switches (legacy flags, which the run sets) and, where this torch has them, the newer
    per-backend fp32 precision settings they map to."""
    state = {"cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
             "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    for name, obj in (("cuda_matmul_fp32_precision", torch.backends.cuda.matmul),
                      ("cudnn_conv_fp32_precision", getattr(torch.backends.cudnn, "conv", None))):
        try:
            state[name] = str(obj.fp32_precision)
        except (AttributeError, RuntimeError):
            pass
    return state


def tf32_off():
    """TF32 off for matmuls and cuDNN convolutions inside the block; the caller's setting restored after."""
    return tf32(False)


class Tf32Guard:
    """Forward pre-hook: refuses a forward with TF32 on, counts the forwards it saw. Copies of a hooked
    model (deepcopy for attribution) share the guard."""

    def __init__(self):
        self.forwards = 0

    def __call__(self, module, args):
        s = numerics_state()
        if s["cuda_matmul_allow_tf32"] or s["cudnn_allow_tf32"]:
            raise RuntimeError(f"TF32 is on during a forward of {type(module).__name__}: {s}")
        self.forwards += 1

    def __deepcopy__(self, memo):
        return self


# ---------------------------------------------------------------- models
def load_model(spec: dict, weights_dir: str | None, mean, std, label: str) -> nn.Module:
    """A pretrained 1000-way model from its config, weights from ``weights_dir`` (release file names,
    as ``make eval-imagenet``) or the hash-checked download; refuses data normalised otherwise."""
    spec = dict(spec)
    release = default_cfg(spec["name"], **model_kwargs(spec))
    if release is None:
        raise ConfigError(f"paper.models.{label}: model '{spec['name']}' has no pretrained release")
    if tuple(release["mean"]) != tuple(mean) or tuple(release["std"]) != tuple(std):
        raise ConfigError(f"{label}'s weights expect mean {release['mean']} / std {release['std']}, "
                          f"the data normalises with {mean} / {std}")
    spec["weights"] = spec.get("weights") or local_weights(release["file"], weights_dir)
    return create_model(**spec, pretrained=True, num_classes=1000)


class Models(Mapping):
    """Label -> pretrained model, loaded on first use, on the device, eval mode, TF32-guarded."""

    def __init__(self, specs: dict, weights_dir, device, mean, std, guard: Tf32Guard):
        self.specs, self.weights_dir, self.device = specs, weights_dir, device
        self.mean, self.std, self.guard = mean, std, guard
        self._cache: dict[str, nn.Module] = {}
        self.weights: dict[str, str] = {}

    def __getitem__(self, label: str) -> nn.Module:
        if label not in self._cache:
            model = load_model(self.specs[label], self.weights_dir, self.mean, self.std, label)
            model.register_forward_pre_hook(self.guard)
            self._cache[label] = model.to(self.device).eval()
        return self._cache[label]

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def key(self, label: str) -> dict:
        spec = dict(self.specs[label])
        release = default_cfg(spec["name"], **model_kwargs(spec))
        spec["weights"] = spec.get("weights") or local_weights(release["file"], self.weights_dir) or "download"
        return spec
