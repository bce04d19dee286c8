"""Masks from the network's coarse scores: upsampled to the image's size, refined by the dense CRF
(at a bounded resolution, and over tiles for large frames), the most likely class per pixel."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..crf import CRFParams, dense_crf
from ..crf_torch import dense_crf_batch
from ..models.segmentation import upsample_logits
from .resample import BAND_VALUES, argmax_resampled, resample
from .sizing import bounded_size, resize_images
from .tiles import crf_tiles


def most_likely(scores: torch.Tensor, size: tuple[int, int], softmax: bool = False) -> torch.Tensor:
    """N×C×h×w -> N×size uint8 argmax of the bilinear resize: in one `F.interpolate` when the full-size
    map is small, band by band when it is not (a 100 Mpx photo)."""
    if scores.shape[0] * scores.shape[1] * size[0] * size[1] > BAND_VALUES:
        return argmax_resampled(scores, size, softmax)
    full = F.interpolate(scores, size=size, mode="bilinear", align_corners=False) \
        if tuple(scores.shape[-2:]) != tuple(size) else scores
    return (full.softmax(1) if softmax else full).argmax(1).to(torch.uint8)


def label_map(image: np.ndarray, coarse: np.ndarray, crf: CRFParams | None = None,
              crf_backend: str = "pydensecrf", crf_max_pixels: int | None = None,
              crf_tile: int | None = None) -> np.ndarray:
    """The mask of one image (H×W uint8): `label_maps_on_device` on the CRF backend's device."""
    device = "cuda" if crf is not None and crf_backend == "torch" and torch.cuda.is_available() else "cpu"
    # A copy: the array may be read-only (Ray's object store), which torch.from_numpy warns about.
    scores = torch.tensor(coarse, dtype=torch.float32, device=device)[None]
    return label_maps_on_device(image[None], scores, crf, crf_max_pixels, crf_backend, crf_tile)[0]


@torch.no_grad()
def label_maps_on_device(images: np.ndarray, coarse: torch.Tensor, crf: CRFParams | None,
                         crf_max_pixels: int | None = None, crf_backend: str = "torch",
                         crf_tile: int | None = None) -> np.ndarray:
    """The masks of N images of one size (N×H×W uint8) from their scores where they lie (the model's
    GPU): upsample, softmax, the dense CRF (the torch one batched over the N images) unless `crf` is
    None, argmax. The CRF runs on at most `crf_max_pixels` pixels (above that on a downscaled copy,
    its marginals upsampled); with `crf_tile`, a frame whose CRF would run on more pixels than a tile
    has is refined tile by tile, each with a margin of context (`tiles.crf_tiles`), so memory follows
    the tile, not the frame."""
    size = tuple(images.shape[1:3])
    if crf is None:
        return most_likely(coarse.float(), size, softmax=True).cpu().numpy()
    if not crf_by_tiles(size, crf_max_pixels, crf_tile):
        return _refined(images, coarse.float(), crf, crf_max_pixels, crf_backend)
    out = np.empty((len(images), *size), np.uint8)
    for (y0, y1, x0, x1), (py0, py1, px0, px1) in crf_tiles(*size, crf_tile):
        window = resample(coarse.float(), size, (py0, py1), (px0, px1))
        labels = _refined(images[:, py0:py1, px0:px1], window, crf, crf_max_pixels, crf_backend)
        out[:, y0:y1, x0:x1] = labels[:, y0 - py0:y1 - py0, x0 - px0:x1 - px0]
    return out


def _refined(images: np.ndarray, scores: torch.Tensor, crf: CRFParams, crf_max_pixels: int | None,
             crf_backend: str) -> np.ndarray:
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
    return most_likely(q, size).cpu().numpy()  # the marginals, bilinear as the network's logits are


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
