"""The model every builder returns: backbone features -> head -> logits at the input's size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """`head` takes the backbone's "out" map, or the whole feature dict when `head_takes_all`.
    Heads that upsample with learned deconvolution to at least the input size are cropped
    (`crop=True`, FCN); all others are bilinearly upsampled to the input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module, head_takes_all: bool = False, crop: bool = False):
        super().__init__()
        self.backbone = backbone
        self.classifier = head
        self.head_takes_all = head_takes_all
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.backbone(x)
        logits = self.classifier(features if self.head_takes_all else features["out"])
        if self.crop:
            logits = logits[..., : size[0], : size[1]]
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
