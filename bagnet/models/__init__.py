"""Model zoo: BagNets, torchvision baselines, CBAM-ResNet-50 and a small global-receptive-field CNN."""
from .registry import create_model, list_models, register_model  # noqa: F401
from . import bagnet, torchvision_models, cbam, small_cnn, pytorchcv_weights  # noqa: F401  (registration side effects)
from .bagnet import BagNet  # noqa: F401


def is_bagnet(model) -> bool:
    return isinstance(getattr(model, "module", model), BagNet)
