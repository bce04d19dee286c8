"""Frames too large for one pass: the network over overlapping windows, its coarse scores blended
cross-faded into one coarse grid over the whole frame (the "slide" inference of the segmentation
libraries, blended where the scores are small), and the dense CRF over tiles with a margin.

The blended grid has the contract of the network's own coarse output: it spans the frame, and its
bilinear resize to the frame's size (`resample`) is the map of scores, so everything downstream
(upsampling, CRF, argmax, band by band) is the same for whole and tiled frames. Memory is the grid
(C × H/8 × W/8 floats: 130 MB for 10,000² and 21 classes) plus one batch of windows, never a
full-resolution C×H×W array.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .predict import coarse_scores
from .resample import sample

# The blended grid is at least this coarse (pixels per cell), whatever the network's own stride: an
# FCN's full-resolution output would otherwise make it C×H×W.
MIN_GRID_STRIDE = 8


@dataclass(frozen=True)
class Tiling:
    """When a frame goes through the network in windows, and which: `tile`-pixel squares overlapping
    by `overlap`, for frames whose size at the network's scale exceeds `above` pixels (None: every
    frame with a side longer than a tile)."""
    tile: int = 1024
    overlap: int = 256
    above: int | None = 2048 * 2048

    def __post_init__(self):
        if self.tile < 32:
            raise ValueError(f"tile {self.tile}: must be at least 32 pixels")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"tile overlap {self.overlap}: must be from 0 to under the tile ({self.tile})")
        if self.above is not None and self.above < 1:
            raise ValueError(f"tile above {self.above}: must be at least 1 pixel")

    def tile_for(self, size: tuple[int, int]) -> int | None:
        """The tile for a frame of `size` at the network's scale, None when it goes whole."""
        if max(size) <= self.tile or (self.above is not None and size[0] * size[1] <= self.above):
            return None
        return self.tile

    def after_out_of_memory(self, size: tuple[int, int]) -> Tiling:
        """For a frame that did not fit whole: this tiling's tile, halved until the frame spans at
        least two, overlap at most a quarter of it."""
        tile = self.tile
        while tile >= max(size) and tile >= 64:
            tile //= 2
        return Tiling(tile, min(self.overlap, tile // 4), above=None)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: every `tile - overlap` pixels, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the overlapping windows that cover a frame."""
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, th, tw) for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def _cell_centres(cells: int, length: int) -> np.ndarray:
    # A grid of `cells` spanning `length` pixels, as a bilinear resize sees it (align_corners=False).
    return (np.arange(cells) + 0.5) * (length / cells) - 0.5


@torch.no_grad()
def tiled_coarse_scores(model: nn.Module, image: np.ndarray, device: torch.device | str, tile: int,
                        overlap: int, batch_size: int = 4, **forward) -> torch.Tensor:
    """H×W×3 uint8 (already at the network's scale) -> C×gh×gw float32 scores on `device`: the
    network's coarse scores of each window (`coarse_scores(..., **forward)`: scales, flip, amp),
    sampled at the cells of one grid over the frame that lie inside the window, and cross-faded where
    windows overlap."""
    height, width = image.shape[:2]
    windows = tile_windows(height, width, tile, overlap)
    total = count = None
    for first in range(0, len(windows), batch_size):
        group = windows[first:first + batch_size]
        crops = np.stack([image[y:y + h, x:x + w] for y, x, h, w in group])
        scores = coarse_scores(model, crops, device, **forward)
        if total is None:  # the grid: the network's stride, at least MIN_GRID_STRIDE
            th, tw = group[0][2:]
            stride = max(MIN_GRID_STRIDE, min(th / scores.shape[-2], tw / scores.shape[-1]))
            grid = (math.ceil(height / stride), math.ceil(width / stride))
            centres = (_cell_centres(grid[0], height), _cell_centres(grid[1], width))
            total = torch.zeros((scores.shape[1], *grid), dtype=torch.float32, device=scores.device)
            count = torch.zeros(grid, dtype=torch.float32, device=scores.device)
        for (y, x, h, w), window in zip(group, scores):
            rows = np.flatnonzero((centres[0] >= y - 0.5) & (centres[0] <= y + h - 0.5))
            cols = np.flatnonzero((centres[1] >= x - 0.5) & (centres[1] <= x + w - 0.5))
            # cell centre -> window pixel -> the window's coarse grid, as its own upsampling maps it
            src_rows = (centres[0][rows] - y + 0.5) * (window.shape[-2] / h) - 0.5
            src_cols = (centres[1][cols] - x + 0.5) * (window.shape[-1] / w) - 0.5
            values = sample(window, torch.from_numpy(src_rows).to(window.device),
                            torch.from_numpy(src_cols).to(window.device))
            weight = torch.from_numpy(np.outer(_ramp(centres[0][rows], y, h, height),
                                               _ramp(centres[1][cols], x, w, width))).to(window.device)
            r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
            total[:, r, c] += values * weight
            count[r, c] += weight
    return total / count


def _ramp(centres: np.ndarray, start: int, size: int, length: int) -> np.ndarray:
    # A window's weight at each cell: its distance from the window's edges inside the frame (where a
    # neighbour overlaps and the window saw zero padding instead of the real context), so windows
    # cross-fade over an overlap instead of averaging in their least informed scores.
    before = centres - start + 0.5 if start > 0 else np.full_like(centres, size)
    after = start + size - 0.5 - centres if start + size < length else np.full_like(centres, size)
    return np.minimum(before, after).astype(np.float32)


def crf_tiles(height: int, width: int, tile: int) -> list[tuple[tuple[int, int, int, int],
                                                              tuple[int, int, int, int]]]:
    """The dense CRF over a tiled frame: a partition into near-equal cores of at most `tile` pixels a
    side, each refined with a margin of `tile // 8` pixels of context around it (the CRF's kernels
    reach ~100 pixels at VOC settings). [(core, padded)], each box (top, bottom, left, right)."""
    margin = tile // 8

    def cuts(length: int) -> list[tuple[int, int]]:
        n = math.ceil(length / tile)
        edges = [round(i * length / n) for i in range(n + 1)]
        return list(zip(edges[:-1], edges[1:]))

    return [((y0, y1, x0, x1), (max(0, y0 - margin), min(height, y1 + margin), max(0, x0 - margin),
                                min(width, x1 + margin)))
            for y0, y1 in cuts(height) for x0, x1 in cuts(width)]
