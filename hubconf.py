"""torch.hub entry points: ``torch.hub.load("<owner>/bagnet-repro", "bagnet33", pretrained=True)``, or with
``source="local"`` from a checkout. Weights come through the suite's own path: the release file is looked for
in ``$BAGNET_WEIGHTS_DIR`` and the torch hub cache, downloaded when missing, and checked against the hash in
its name before it is loaded (``weights_only=True``). ``num_classes`` and the BagNets' ``width`` pass through.
"""
dependencies = ["torch", "torchvision"]

from bagnet.models import create_model as _create  # noqa: E402


def _entry(name: str, doc: str):
    def load(pretrained: bool = False, **kwargs):
        return _create(name, pretrained=pretrained, **kwargs)
    load.__name__, load.__doc__ = name, doc
    return load


bagnet9 = _entry("bagnet9", "BagNet-9 (the authors' bagnet8 release: 9 x 9 px patches).")
bagnet17 = _entry("bagnet17", "BagNet-17 (the authors' bagnet16 release: 17 x 17 px patches).")
bagnet33 = _entry("bagnet33", "BagNet-33 (the authors' bagnet32 release: 33 x 33 px patches).")
resnet50 = _entry("resnet50", "ResNet-50 (torchvision's ImageNet weights).")
densenet121 = _entry("densenet121", "DenseNet-121 (torchvision's ImageNet weights).")
densenet169 = _entry("densenet169", "DenseNet-169 (torchvision's ImageNet weights).")
vgg16 = _entry("vgg16", "VGG-16 (torchvision's ImageNet weights).")
cbam_resnet50 = _entry("cbam_resnet50", "CBAM-ResNet-50 (random init; pretrained: cbam_resnet50_pytorchcv).")
