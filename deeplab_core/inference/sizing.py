"""The size the network sees an image at, the CRF's bounded size, and the resize between them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# `--scale auto` leaves images up to this much over the model's training scale at their own size.
SCALE_TOLERANCE = 1.25
SCALES = ("auto", "native")


def inference_size(height: int, width: int, scale: str | int, trained_long_side: int | None) -> tuple[int, int]:
    """The size the network sees an image at. `native`: its own. An integer N: long side N. `auto`:
    the model's training scale (the median long side of its training images, from model.json) when
    the image's long side exceeds it by more than SCALE_TOLERANCE, else its own (models saved
    without a training scale: native)."""
    long_side = max(height, width)
    if scale == "native" or (scale == "auto" and not (trained_long_side and
                                                      long_side > trained_long_side * SCALE_TOLERANCE)):
        return height, width
    target = trained_long_side if scale == "auto" else int(scale)
    return max(1, round(height * target / long_side)), max(1, round(width * target / long_side))


def bounded_size(size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    """`size` scaled down, aspect kept, to at most `max_pixels` pixels (None: no bound)."""
    h, w = size
    if not max_pixels or h * w <= max_pixels:
        return h, w
    f = (max_pixels / (h * w)) ** 0.5
    return max(1, int(h * f)), max(1, int(w * f))


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×C×H×W (any float or uint8) -> N×C×size, antialiased bilinear (a photo shrunk as a viewer
    would), in the input's dtype. One channel at a time: a 100 Mpx photo never exists as floats in
    all three colours at once (1.2 GB)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    channels = []
    for c in range(images.shape[1]):
        out = F.interpolate(images[:, c:c + 1].float(), size=size, mode="bilinear", align_corners=False,
                            antialias=True)
        channels.append(out.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8
                        else out.to(images.dtype))
    return torch.cat(channels, 1)
