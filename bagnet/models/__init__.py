"""Model zoo: BagNets, torchvision baselines, CBAM-ResNet-50 and a small global-receptive-field CNN."""
from ..utils import unwrap
from . import bagnet, cbam, small_cnn, torchvision_models  # noqa: F401  (registration side effects)
from .bagnet import BagNet
from .registry import create_model, default_cfg, list_models, register_model  # noqa: F401


def is_bagnet(model) -> bool:
    return isinstance(unwrap(model), BagNet)
