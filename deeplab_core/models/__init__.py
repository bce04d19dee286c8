"""DeepLab v2/v3/v3+ and FCN models: `build_model(name, num_classes, **options)`."""
from .msc import MSC, MSC_SCALES, tta_probabilities
from .registry import MODELS, build_model, model_options

__all__ = ["MODELS", "MSC", "MSC_SCALES", "build_model", "model_options", "tta_probabilities"]
