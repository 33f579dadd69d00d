"""Model zoo: BagNets, torchvision baselines, CBAM-ResNet-50, pytorchcv-weight variants and a small CNN."""
from ..utils import unwrap
from . import bagnet, cbam, pytorchcv_weights, small_cnn, torchvision_models  # noqa: F401  (registration)
from .bagnet import BagNet
from .registry import create_model, default_cfg, list_models, register_model  # noqa: F401


def is_bagnet(model) -> bool:
    return isinstance(unwrap(model), BagNet)
