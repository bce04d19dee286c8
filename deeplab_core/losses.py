"""Loss and optimiser parameter groups of the DeepLab recipe."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data.labels import IGNORE_INDEX
from .models.segmentation import unwrap


def segmentation_loss(outputs, target: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                      normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel-wise cross-entropy ignoring 255; summed over a list of outputs (MSC's per-scale and fused
    logits in training). The mean over the valid pixels, or their sum divided by `normalizer` (the
    valid pixels of all the micro-batches of one accumulated step, so the sum of their losses is the
    big batch's loss exactly)."""
    if isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    if normalizer is None:
        return sum(F.cross_entropy(o, target, ignore_index=ignore_index) for o in outputs)
    return sum(F.cross_entropy(o, target, ignore_index=ignore_index, reduction="sum") for o in outputs) / normalizer


def param_groups(model: nn.Module, base_lr: float, classifier_lr_mult: float = 10.0,
                 weight_decay: float = 5e-4) -> list[dict]:
    """Backbone at the base LR, the classifier (everything after the backbone, which starts from
    random weights) at `classifier_lr_mult`× (10× in DeepLab). Frozen parameters are left out."""
    inner = unwrap(model)
    head = {id(p) for p in inner.classifier.parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    classifier = [p for p in model.parameters() if p.requires_grad and id(p) in head]
    return [{"params": backbone, "lr": base_lr, "weight_decay": weight_decay, "name": "backbone"},
            {"params": classifier, "lr": base_lr * classifier_lr_mult, "weight_decay": weight_decay,
             "name": "classifier"}]
