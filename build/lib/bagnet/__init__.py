"""bagnet-repro: BagNets, baselines and the signature experiments of Brendel & Bethge (ICLR 2019)."""
from .models import create_model, list_models  # noqa: F401

__version__ = "0.1.0"
