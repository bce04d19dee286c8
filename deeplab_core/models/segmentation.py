"""The model every builder returns: backbone features -> head -> logits at the input's size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import IMAGENET, InputNormalization
from .msc import MSC


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

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits on the network's own output grid (1/8 or 1/16 of the input for DeepLab; the input
        grid for FCN), before the final upsampling: batch segmentation ships these, not full-size maps."""
        features = self.backbone(x)
        logits = self.classifier(features if self.head_takes_all else features["out"])
        return logits[..., : x.shape[-2], : x.shape[-1]] if self.crop else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_logits(self.coarse_logits(x), x.shape[-2:])

    @property
    def input_normalization(self) -> InputNormalization:
        """What the backbone's weights expect: ImageNet RGB statistics, or Caffe's BGR mean pixel."""
        return getattr(self.backbone, "normalization", IMAGENET)


def unwrap(model: nn.Module) -> nn.Module:
    """torch.compile, DDP and MSC wrappers -> the plain SegmentationModel."""
    while True:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, MSC):
            model = model.model
        else:
            return model


def input_normalization(model: nn.Module) -> InputNormalization:
    """The input normalisation of a model inside any wrappers; callers normalise with it."""
    return getattr(unwrap(model), "input_normalization", IMAGENET)


def upsample_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling to the input size, exactly as the model's own forward does it."""
    size = tuple(size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
