"""DeepLab v2/v3/v3+ and FCN models: `build_model(name, num_classes, **options)`."""
from .msc import MSC, MSC_SCALES, tta_probabilities

__all__ = ["MODELS", "MSC", "MSC_SCALES", "build_model", "model_options", "tta_probabilities"]
_REGISTRY = ("MODELS", "build_model", "model_options")


def __getattr__(name: str):
    # The registry's backbones come from torchvision, whose import costs ~2.5 CPU-s (it loads
    # torch._dynamo): loaded on first use, so a process that only moves images, logits and masks
    # (a Ray Data read/write task, a CRF actor) never pays it.
    if name in _REGISTRY:
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
