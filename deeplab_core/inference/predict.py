"""The network's scores for images: probabilities at the image size (validation), coarse scores on
the network's grid (batch segmentation, evaluation), and halving a batch that runs out of memory."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import normalize
from ..models import tta_probabilities
from ..models.msc import _rescale
from ..models.segmentation import input_normalization
from .sizing import resize_images


def predict_probabilities(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                          scales=(1.0,), flip: bool = False, amp: bool = False) -> np.ndarray:
    """H×W×3 uint8 -> C×H×W float32 class probabilities at the image's own resolution."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(image))[None].to(device), input_normalization(model))
    device_type = torch.device(device).type
    with torch.autocast(device_type, enabled=amp and device_type == "cuda"):
        probs = tta_probabilities(model, x, scales, flip)
    return probs[0].float().cpu().numpy()


OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def ran_out_of_memory(error: BaseException) -> bool:
    """A GPU's or the CPU's out of memory (PyTorch's CPU allocator raises a plain RuntimeError)."""
    return isinstance(error, OUT_OF_MEMORY) or (isinstance(error, RuntimeError)
                                                 and "can't allocate memory" in str(error))


def halving_on_oom(run, items: list):
    """Yield `(items, run(items))`; when `run` runs out of memory, free the GPU's cache and retry each
    half, down to single items; a single item that still does not fit yields `(items, None)`. So one
    image too large for the card costs that image, not its whole batch, and the next batch runs at
    full size again."""
    try:
        result, failed = run(items), False
    except Exception as e:  # left before retrying: the error's frames hold the tensors that filled memory
        if not ran_out_of_memory(e):
            raise
        result, failed = None, True
    if not failed:
        yield items, result
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(items) == 1:
        yield items, None
        return
    half = len(items) // 2
    yield from halving_on_oom(run, items[:half])
    yield from halving_on_oom(run, items[half:])


def _coarse(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # MSC and other wrappers have no coarse grid of their own: their output is at input size.
    return model.coarse_logits(x) if hasattr(model, "coarse_logits") else model(x)


@torch.no_grad()
def coarse_scores(model: nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                  scales=(1.0,), flip: bool = False, amp: bool = False,
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """N×H×W×3 uint8 (one size) -> N×C×h×w float32 scores on the network's output grid, on `device`;
    their softmax after a bilinear resize to the image size is the class probabilities there. With
    `size` (from `inference_size`) the network sees the images resized to it first.

    A single scale without flip returns the raw coarse logits, so upsampling them reproduces the
    model's own forward bit for bit. With test-time scales/flips the probabilities of each pass are
    averaged on the grid of the scale-1 pass and returned as their log."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    if size is not None and tuple(size) != tuple(images.shape[1:3]):
        x = resize_images(x.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
    x = normalize(x, input_normalization(model))
    device_type = torch.device(device).type
    with torch.autocast(device_type, enabled=amp and device_type == "cuda"):
        if tuple(scales) == (1.0,) and not flip:
            return _coarse(model, x).float()
        grid = _coarse(model, x).shape[-2:]
        total = 0
        for s in scales:
            for flipped in ((False, True) if flip else (False,)):
                logits = _coarse(model, _rescale(x.flip(-1) if flipped else x, s))
                logits = F.interpolate(logits.flip(-1) if flipped else logits, size=grid, mode="bilinear",
                                       align_corners=False)
                total = total + logits.float().softmax(1)
        return (total / (len(scales) * (2 if flip else 1))).clamp_min(1e-12).log()


def predict_coarse(model: nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                   scales=(1.0,), flip: bool = False, amp: bool = False) -> np.ndarray:
    """`coarse_scores` as a numpy array (what crosses to the CPU CRF stage)."""
    return coarse_scores(model, images, device, scales, flip, amp).cpu().numpy()
