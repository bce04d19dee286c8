"""DeepLab heads: LargeFOV, ASPP v2 (branch logits summed), ASPP v3 and the v3+ decoder."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead

ASPP_S = (2, 4, 8, 12)
ASPP_L = (6, 12, 18, 24)


def atrous_conv(in_channels: int, out_channels: int, kernel: int, rate: int) -> nn.Conv2d:
    """'same' atrous convolution (any kernel size, even ones too, as in the LargeFOV 4×4 row)."""
    return nn.Conv2d(in_channels, out_channels, kernel, padding=rate * (kernel - 1) // 2, dilation=rate)


class LargeFOV(nn.Sequential):
    """fc6 (k×k at rate r) -> ReLU -> dropout -> fc7 (1×1) -> ReLU -> dropout -> fc8 (1×1 to classes).
    DeepLab-LargeFOV's default is 3×3 at rate 12 with 1024 channels."""

    def __init__(self, in_channels: int, num_classes: int, kernel: int = 3, rate: int = 12, channels: int = 1024,
                 dropout: float = 0.5):
        super().__init__(
            atrous_conv(in_channels, channels, kernel, rate), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1))


class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP: parallel branches at different rates whose class logits are summed.

    With `channels` set, each branch is fc6 (3×3 at its rate) - fc7 - fc8 as in the paper's VGG-16
    ASPP; with `channels=None` each branch is one 3×3 atrous conv straight to the classes, as in the
    released ResNet-101 model."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_L,
                 channels: int | None = 1024, dropout: float = 0.5):
        super().__init__()
        if channels:
            self.branches = nn.ModuleList(LargeFOV(in_channels, num_classes, 3, r, channels, dropout) for r in rates)
        else:
            self.branches = nn.ModuleList(atrous_conv(in_channels, num_classes, 3, r) for r in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


def aspp_v3_rates(output_stride: int) -> tuple[int, int, int]:
    """DeepLab v3: rates (6, 12, 18) at output stride 16, doubled at 8."""
    return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


def deeplabv3_head(in_channels: int, num_classes: int, output_stride: int) -> nn.Module:
    """torchvision's own DeepLabHead: ASPP (1×1, three atrous 3×3, image pooling; BN; concat; 1×1),
    then 3×3 conv, BN, ReLU and the classifier."""
    return DeepLabHead(in_channels, num_classes, aspp_v3_rates(output_stride))


class DeepLabV3PlusHead(nn.Module):
    """ASPP v3 on the high-level features, upsampled and concatenated with 48 projected low-level
    channels, refined by two 3×3 convs (DeepLab v3+ decoder)."""

    def __init__(self, in_channels: int, low_channels: int, num_classes: int, output_stride: int):
        super().__init__()
        self.aspp = ASPP(in_channels, aspp_v3_rates(output_stride), 256)
        self.project = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48),
                                     nn.ReLU(inplace=True))
        self.decode = nn.Sequential(
            nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Conv2d(256, num_classes, 1))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.project(features["low"])
        high = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decode(torch.cat([high, low], dim=1))
