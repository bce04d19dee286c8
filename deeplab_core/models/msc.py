"""Multi-scale inputs with max fusion (DeepLab v2 "MSC") and test-time augmentation."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MSC_SCALES = (1.0, 0.75, 0.5)


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                                              recompute_scale_factor=True)


class MSC(nn.Module):
    """Runs one shared-weight model on the input at several scales, upsamples every scale's logits
    to the input size and fuses them by a per-pixel max. In training it returns
    `[logits at each scale..., fused]`, so the loss sums over all of them as in DeepLab v2; in eval,
    the fused logits only."""

    def __init__(self, model: nn.Module, scales: Sequence[float] = MSC_SCALES):
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"MSC scales must be positive, got {tuple(scales)}")
        self.model = model
        self.scales = tuple(float(s) for s in scales)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        outputs = [F.interpolate(self.model(_rescale(x, s)), size=size, mode="bilinear", align_corners=False)
                   if s != 1 else self.model(x) for s in self.scales]
        fused = torch.stack(outputs).amax(0)
        return outputs + [fused] if self.training else fused


@torch.no_grad()
def tta_probabilities(model: nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0,),
                      flip: bool = False) -> torch.Tensor:
    """Class probabilities averaged over input scales and (optionally) horizontal flips, at input size."""
    size = x.shape[-2:]
    total = None
    for s in scales:
        for flipped in ((False, True) if flip else (False,)):
            xi = _rescale(x.flip(-1) if flipped else x, s)
            logits = model(xi)
            logits = logits.flip(-1) if flipped else logits
            probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
