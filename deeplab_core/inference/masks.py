"""Masks from the network's coarse scores: upsampled to the image's size, refined by the dense CRF
(at a bounded resolution, and over tiles for large frames), the most likely class per pixel, and how
sure of it the model is (the top probability and the entropy of each pixel: no labels needed)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..crf import CRFParams, dense_crf
from ..crf import dense_crf_batch
from ..models.segmentation import upsample_logits
from .resample import BAND_VALUES, resample, resampled_bands
from .sizing import bounded_size, resize_images
from .tiles import crf_tiles


@dataclass(frozen=True)
class Masks:
    """N images' masks and how sure of them the model is, each N×H×W uint8: `labels` (class ids),
    `confidence` (255 × the top class probability: after the CRF its marginal, else the softmax) and
    `entropy` (255 × the entropy of the class probabilities over log C, 0 sure .. 255 uniform)."""
    labels: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray

    def __getitem__(self, index) -> Masks:
        return Masks(self.labels[index], self.confidence[index], self.entropy[index])


def _decide(values: torch.Tensor, softmax: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    probs = values.softmax(1) if softmax else values
    top, labels = probs.max(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1) / math.log(max(2, probs.shape[1]))
    return labels.to(torch.uint8), _byte(top), _byte(entropy)


def _byte(unit: torch.Tensor) -> torch.Tensor:
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8)


def most_likely(scores: torch.Tensor, size: tuple[int, int], softmax: bool = False) -> Masks:
    """N×C×h×w scores (probabilities, or logits with `softmax`) -> `Masks` of their bilinear resize to
    `size`: in one `F.interpolate` when the full-size map is small, band by band when it is not (a
    100 Mpx photo)."""
    if scores.shape[0] * scores.shape[1] * size[0] * size[1] <= BAND_VALUES:
        full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False) \
            if tuple(scores.shape[-2:]) != tuple(size) else scores
        return Masks(*(m.cpu().numpy() for m in _decide(full, softmax)))
    maps = [np.empty((scores.shape[0], *size), np.uint8) for _ in range(3)]
    for r0, r1, band in resampled_bands(scores, size):
        for out, decided in zip(maps, _decide(band, softmax)):
            out[:, r0:r1] = decided.cpu().numpy()
    return Masks(*maps)


def label_map(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None = None,
              crf_backend: str = "pydensecrf", crf_max_pixels: int | None = None,
              crf_tile: int | None = None) -> np.ndarray:
    """The mask of one image (H×W uint8): `image_masks(...).labels`."""
    return image_masks(image, coarse, crf, crf_backend, crf_max_pixels, crf_tile).labels


def image_masks(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None = None,
                crf_backend: str = "pydensecrf", crf_max_pixels: int | None = None,
                crf_tile: int | None = None) -> Masks:
    """`label_maps_on_device` for one image (maps H×W), on the CRF backend's device."""
    device = "cuda" if crf is not None and crf_backend == "torch" and torch.cuda.is_available() else "cpu"
    # A copy: the array may be read-only (Ray's object store), which torch.from_numpy warns about.
    scores = torch.tensor(coarse, dtype=torch.float32, device=device)[None]
    return label_maps_on_device(image[None], scores, crf, crf_max_pixels, crf_backend, crf_tile)[0]


@torch.no_grad()
def label_maps_on_device(images: np.ndarray, coarse: torch.Tensor, crf: CRFParams | None,
                         crf_max_pixels: int | None = None, crf_backend: str = "torch",
                         crf_tile: int | None = None) -> Masks:
    """The `Masks` of N images of one size from their scores where they lie (the model's GPU):
    upsample, softmax, the dense CRF (the torch one batched over the N images) unless `crf` is None,
    most likely class. The CRF runs on at most `crf_max_pixels` pixels (above that on a downscaled
    copy, its marginals upsampled); with `crf_tile`, a frame whose CRF would run on more pixels than a
    tile has is refined tile by tile, each with a margin of context (`tiles.crf_tiles`), so memory
    follows the tile, not the frame."""
    size = tuple(images.shape[1:3])
    if crf is None:
        return most_likely(coarse.float(), size, softmax=True)
    if not crf_by_tiles(size, crf_max_pixels, crf_tile):
        return _refined(images, coarse.float(), crf, crf_max_pixels, crf_backend)
    maps = [np.empty((len(images), *size), np.uint8) for _ in range(3)]
    for (y0, y1, x0, x1), (py0, py1, px0, px1) in crf_tiles(*size, crf_tile):
        window = resample(coarse.float(), size, (py0, py1), (px0, px1))
        refined = _refined(images[:, py0:py1, px0:px1], window, crf, crf_max_pixels, crf_backend)
        for out, part in zip(maps, (refined.labels, refined.confidence, refined.entropy)):
            out[:, y0:y1, x0:x1] = part[:, y0 - py0:y1 - py0, x0 - px0:x1 - px0]
    return Masks(*maps)


def _refined(images: np.ndarray, scores: torch.Tensor, crf: CRFParams, crf_max_pixels: int | None,
             crf_backend: str) -> Masks:
    size = tuple(images.shape[1:3])
    crf_size = bounded_size(size, crf_max_pixels)
    probs = upsample_logits(scores, crf_size).softmax(1)
    pixels = resize_images(torch.tensor(images, device=scores.device).permute(0, 3, 1, 2),
                           crf_size).permute(0, 2, 3, 1).contiguous()
    if crf_backend == "torch":
        q = dense_crf_batch(pixels, probs, crf)
    else:
        q = torch.stack([torch.from_numpy(dense_crf(np.ascontiguousarray(p), pr, crf, crf_backend))
                         for p, pr in zip(pixels.cpu().numpy(), probs.cpu().numpy())]).to(scores.device)
    return most_likely(q, size)  # the marginals, bilinear as the network's logits are


def crf_by_tiles(size: tuple[int, int], crf_max_pixels: int | None, crf_tile: int | None) -> bool:
    """Whether a tiled frame's CRF runs tile by tile: when the whole frame, even at its bounded CRF
    size, has more pixels than a tile (a 100 Mpx frame with --crf-max-pixels raised). At the default
    bound the whole frame's CRF is smaller than one tile, and tiles would only multiply its cost."""
    if not crf_tile:
        return False
    h, w = bounded_size(size, crf_max_pixels)
    return h * w > crf_tile * crf_tile


def crf_scale(size: tuple[int, int], crf_max_pixels: int | None, crf_tile: int | None = None) -> float:
    """The scale (≤ 1) at which `label_maps_on_device` runs the CRF on a frame of `size`; when by
    tiles, that of its largest tile."""
    boxes = [(bottom - top, right - left) for _, (top, bottom, left, right) in crf_tiles(*size, crf_tile)] \
        if crf_by_tiles(size, crf_max_pixels, crf_tile) else [tuple(size)]
    return min(bounded_size(box, crf_max_pixels)[0] / box[0] for box in boxes)
