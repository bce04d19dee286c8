"""Per-image prediction shared by validation, batch segmentation and evaluation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .crf import CRFParams, dense_crf
from .crf_torch import dense_crf_batch
from .data.transforms import normalize
from .models import tta_probabilities
from .models.msc import _rescale
from .models.segmentation import input_normalization, upsample_logits


def predict_probabilities(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                          scales=(1.0,), flip: bool = False, amp: bool = False) -> np.ndarray:
    """H×W×3 uint8 -> C×H×W float32 class probabilities at the image's own resolution."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(image))[None].to(device), input_normalization(model))
    device_type = torch.device(device).type
    with torch.autocast(device_type, enabled=amp and device_type == "cuda"):
        probs = tta_probabilities(model, x, scales, flip)
    return probs[0].float().cpu().numpy()


def _coarse(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # MSC and other wrappers have no coarse grid of their own: their output is at input size.
    return model.coarse_logits(x) if hasattr(model, "coarse_logits") else model(x)


@torch.no_grad()
def coarse_scores(model: nn.Module, images: np.ndarray, device: torch.device | str = "cpu",
                  scales=(1.0,), flip: bool = False, amp: bool = False) -> torch.Tensor:
    """N×H×W×3 uint8 (one size) -> N×C×h×w float32 scores on the network's output grid, on `device`;
    their softmax after `upsample_probabilities` is the class probabilities at the image size.

    A single scale without flip returns the raw coarse logits, so upsampling them reproduces the
    model's own forward bit for bit. With test-time scales/flips the probabilities of each pass are
    averaged on the grid of the scale-1 pass and returned as their log."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(images)).to(device), input_normalization(model))
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


def upsample_probabilities(coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C×h×w scores from `predict_coarse` -> C×H×W float32 probabilities at the image size."""
    logits = upsample_logits(torch.tensor(coarse, dtype=torch.float32)[None], size)  # a copy: input may be read-only
    return logits.softmax(1)[0].numpy()


def label_map(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None = None,
              crf_backend: str = "pydensecrf") -> np.ndarray:
    """The mask of one image: scores upsampled to its size, refined by the dense CRF unless `crf` is
    None, then the most likely class per pixel (H×W uint8)."""
    probs = upsample_probabilities(coarse, image.shape[:2])
    if crf is not None:
        probs = dense_crf(image, probs, crf, crf_backend)
    return probs.argmax(0).astype(np.uint8)


@torch.no_grad()
def label_maps_on_device(images: np.ndarray, coarse: torch.Tensor, crf: CRFParams | None) -> np.ndarray:
    """`label_map` of N images of one size at once, where `coarse` lies (the model's GPU): upsample,
    softmax, the torch dense CRF batched over the N images, argmax. Returns N×H×W uint8."""
    probs = upsample_logits(coarse.float(), images.shape[1:3]).softmax(1)
    if crf is not None:
        probs = dense_crf_batch(torch.from_numpy(np.ascontiguousarray(images)).to(coarse.device), probs, crf)
    return probs.argmax(1).to(torch.uint8).cpu().numpy()
