"""FCN-32s/16s/8s on VGG-16 (Long et al.): fc6/fc7 as convolutions, score layers on pool4/pool3
skip paths, and learned deconvolutions initialised to bilinear interpolation."""
from __future__ import annotations

import torch
from torch import nn


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Per-channel bilinear upsampling weights for a ConvTranspose2d (as FCN's surgery initialises)."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    filt = 1 - torch.abs(og - center) / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return weight


def upsample(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop an upsampled map to a skip map's size (Caffe's crop layer, offset 0)."""
    return x[..., : like.shape[-2], : like.shape[-1]]


class FCNHead(nn.Module):
    """Scores stride-32 features, then fuses pool4 (16s) and pool3 (8s) skip scores, as `stride` asks."""

    def __init__(self, num_classes: int, stride: int = 8, channels: int = 4096, dropout: float = 0.5):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN stride must be 8, 16 or 32, got {stride}")
        self.stride = stride
        self.fc = nn.Sequential(
            nn.Conv2d(512, channels, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.score_fr = nn.Conv2d(channels, num_classes, 1)
        if stride <= 16:
            self.upscore2 = upsample(num_classes, 2)
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        if stride == 8:
            self.upscore_pool4 = upsample(num_classes, 2)
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore = upsample(num_classes, stride)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        score = self.score_fr(self.fc(features["out"]))
        if self.stride <= 16:
            pool4 = self.score_pool4(features["pool4"])
            score = _fit(self.upscore2(score), pool4) + pool4
        if self.stride == 8:
            pool3 = self.score_pool3(features["pool3"])
            score = _fit(self.upscore_pool4(score), pool3) + pool3
        return self.upscore(score)
