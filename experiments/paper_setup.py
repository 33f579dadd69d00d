"""Configuration, numerics, models and resumable state of ``make reproduce-paper`` (:mod:`experiments.paper`):
the schema of the ``paper:`` config block, the published numbers, the
pretrained models loaded from release files, and the per-(part, unit) store a killed run resumes from."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bagnet.config import add_schema_store, untyped_node
from bagnet.engine import Tf32Guard
from bagnet.heatmaps import EVIDENCE
from bagnet.identity import model_key
from bagnet.models.releases import pretrained_model

from . import additivity, sensitivity
from .keys import IMAGE, ranged
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
    num_images: int | None = ranged(None, ge=1)      # None = the whole split (all 50,000 val images)
    batch_size: int = ranged(64, ge=1)


@dataclass
class TexturePartConfig:
    """The texture part of the paper pipeline (``paper.texture``); the synthesis itself: texture_synthesis.TextureConfig."""
    num_images: int = ranged(100, ge=1)
    steps: int = ranged(2000, ge=1)                  # Gatys et al. (2015): L-BFGS, maxiter 2000, memory 20
    layers: list[str] = field(default_factory=lambda: list(GATYS_LAYERS))   # conv1_1, pool1-4 of VGG-19
    history_size: int = ranged(20, ge=1)
    lr: float = ranged(1.0, gt=0)                    # torch L-BFGS initial step (strong-Wolfe line search)
    chunk: int = ranged(8, ge=1)                     # textures saved every `chunk` images (resume granularity)
    scramble_grid: int = ranged(4, ge=2)             # the tile-permutation variant: g x g tiles (4x4 = 56 px at 224)
    num_examples: int = ranged(4, ge=0)


@dataclass
class InteractionsConfig(additivity.Config):
    """The signature's own schema with the paper pipeline's defaults: three mask sizes, gaps up to the whole
    224 px image, 100 images."""
    patch_sizes: list[int] = ranged([8, 16, 32], ge=1, le=IMAGE, nonempty=True)   # the paper's sizes not verified
    distance_bins: list[int] = ranged([0, 4, 8, 16, 32, 64, 128, 224], ge=0)
    num_images: int | None = ranged(100, ge=1)


@dataclass
class ErrorsConfig:
    pairs: list[list[str]] | None = None   # scatter panels; None = the BagNet vs each CNN
    scatter_metric: str = ranged("top5", choices=("top1", "top5"))   # the paper: class-conditional top-5


@dataclass
class SensitivityConfig(sensitivity.Config):
    """The signature's own schema with the paper pipeline's defaults: epsilon-LRP added, 100 images;
    targets None = every CNN (non-BagNet model)."""
    methods: list[str] = ranged(sensitivity.METHODS[:-2] + ["lrp", "occlusion", "random"],
                                choices=sensitivity.METHODS + sensitivity.OPTIONAL_METHODS, nonempty=True)
    num_images: int | None = ranged(100, ge=1)


@dataclass
class PatchesConfig:
    # tench, English springer, French horn, garbage truck, parachute
    classes: list[str] = field(default_factory=lambda: ["n01440764", "n02102040", "n03394916", "n03417042",
                                                        "n03888257"])
    k: int = ranged(8, ge=1)
    per_class_images: int = ranged(50, ge=1)         # all 50 val images of each class
    distractor_images: int = ranged(1000, ge=1)      # images of other classes searched for distractors
    heatmap_images: int = ranged(8, ge=1)
    heatmap_stride: int = ranged(1, ge=1)            # exact heatmaps
    max_per_image: int = ranged(2, ge=1)             # at most this many of one image's windows in a class's top k
    # rank patches and colour heatmaps by the logit minus the patch's mean logit (a patch's logits are identifiable
    # only up to a constant per patch); logit: the raw logit, as the authors' routine
    evidence: str = ranged("relative", choices=EVIDENCE)


@dataclass
class PaperConfig:
    models: dict[str, Any] = field(default_factory=dict)   # label -> model config (pretrained)
    texture_model: dict[str, Any] = field(default_factory=lambda: {"name": "vgg19"})   # Gatys et al.: VGG-19 features
    bagnet: str = "BagNet-33"            # the BagNet whose heatmaps / errors are compared with the CNNs
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    progress: bool = True                 # tqdm bars
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    texture: TexturePartConfig = field(default_factory=TexturePartConfig)
    interactions: InteractionsConfig = field(default_factory=InteractionsConfig)
    errors: ErrorsConfig = field(default_factory=ErrorsConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)

    def __post_init__(self):
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown parts {unknown}; valid: {PARTS}")


# paper/schema in Hydra's ConfigStore (configs/experiment/paper.yaml extends it): every key exists with its default
# here, a typo is refused at compose; types are checked by typed_cfg in one line (bagnet.config.untyped_node)
PaperNode = untyped_node(PaperConfig, "PaperNode")
PaperNode.__module__ = __name__        # importable by name: a composed config pickles (sweeps, launchers)


def store_schema() -> None:
    from hydra.core.config_store import ConfigStore
    ConfigStore.instance().store(group="paper", name="schema", node=PaperNode)


add_schema_store(store_schema)


# numerics: TF32 off and guarded (bagnet.engine: tf32, numerics_state, Tf32Guard, the one precision guard)


# ---------------------------------------------------------------- models
def load_model(spec: dict, weights_dir: str | None, data, label: str) -> nn.Module:
    """A pretrained model as released (:func:`bagnet.models.releases.pretrained_model`, the one loader and finder)."""
    return pretrained_model(spec, data, f"paper.models.{label}" if label != "texture_model" else "paper.texture_model",
                            weights_dir)


def release_key(spec: dict, weights_dir: str | None) -> dict:
    """What identifies a pretrained model (:func:`bagnet.identity.model_key`): its config and the file it loads."""
    return model_key({**dict(spec), "pretrained": True}, weights_dir)


class Models(Mapping):
    """Label -> pretrained model, loaded on first use, on the device, eval mode, TF32-guarded."""

    def __init__(self, specs: dict, weights_dir, device, data, guard: Tf32Guard):
        self.specs, self.weights_dir, self.device = specs, weights_dir, device
        self.data, self.guard = data, guard
        self._cache: dict[str, nn.Module] = {}
        self.weights: dict[str, str] = {}

    def __getitem__(self, label: str) -> nn.Module:
        if label not in self._cache:
            model = load_model(self.specs[label], self.weights_dir, self.data, label)
            model.register_forward_pre_hook(self.guard)
            self._cache[label] = model.to(self.device).eval()
        return self._cache[label]

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def key(self, label: str) -> dict:
        return release_key(self.specs[label], self.weights_dir)
