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
    would), in the input's dtype."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(images.dtype) if images.dtype == torch.uint8 else out.to(images.dtype)


OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def halving_on_oom(run, items: list):
    """Yield `(items, run(items))`; when `run` runs out of memory, free the GPU's cache and retry each
    half, down to single items; a single item that still does not fit yields `(items, None)`. So one
    image too large for the card costs that image, not its whole batch, and the next batch runs at
    full size again."""
    try:
        result, failed = run(items), False
    except OUT_OF_MEMORY:  # left before retrying: the error's frames hold the tensors that filled memory
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
    their softmax after `upsample_probabilities` is the class probabilities at the image size. With
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


def upsample_probabilities(coarse: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """C×h×w scores from `predict_coarse` -> C×H×W float32 probabilities at the image size."""
    logits = upsample_logits(torch.tensor(coarse, dtype=torch.float32)[None], size)  # a copy: input may be read-only
    return logits.softmax(1)[0].numpy()


def label_map(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None = None,
              crf_backend: str = "pydensecrf", crf_max_pixels: int | None = None) -> np.ndarray:
    """The mask of one image: scores upsampled to its size, refined by the dense CRF unless `crf` is
    None, then the most likely class per pixel (H×W uint8). The CRF runs on at most `crf_max_pixels`
    pixels: above that, on a downscaled copy whose marginals are upsampled to the image size."""
    if crf is None:
        return upsample_probabilities(coarse, image.shape[:2]).argmax(0).astype(np.uint8)
    device = "cuda" if crf_backend == "torch" and torch.cuda.is_available() else "cpu"  # as dense_crf does
    # Copies: the arrays may be read-only (Ray's object store), which torch.from_numpy warns about.
    return label_maps_on_device(image[None], torch.tensor(coarse, dtype=torch.float32, device=device)[None], crf,
                                crf_max_pixels, crf_backend)[0]


@torch.no_grad()
def label_maps_on_device(images: np.ndarray, coarse: torch.Tensor, crf: CRFParams | None,
                         crf_max_pixels: int | None = None, crf_backend: str = "torch") -> np.ndarray:
    """`label_map` of N images of one size at once, where `coarse` lies (the model's GPU): upsample,
    softmax, the dense CRF (the torch one batched over the N images), argmax. Returns N×H×W uint8."""
    size = tuple(images.shape[1:3])
    if crf is None:
        return upsample_logits(coarse.float(), size).softmax(1).argmax(1).to(torch.uint8).cpu().numpy()
    crf_size = bounded_size(size, crf_max_pixels)
    probs = upsample_logits(coarse.float(), crf_size).softmax(1)
    pixels = resize_images(torch.tensor(images, device=coarse.device).permute(0, 3, 1, 2),
                           crf_size).permute(0, 2, 3, 1).contiguous()
    if crf_backend == "torch":
        q = dense_crf_batch(pixels, probs, crf)
    else:
        q = torch.stack([torch.from_numpy(dense_crf(np.ascontiguousarray(p), pr, crf, crf_backend))
                         for p, pr in zip(pixels.cpu().numpy(), probs.cpu().numpy())]).to(coarse.device)
    if crf_size != size:  # the marginals, bilinear as the network's logits are
        q = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
    return q.argmax(1).to(torch.uint8).cpu().numpy()
