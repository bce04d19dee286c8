"""Windows of a bilinear resize without the full-size result: the masks of a 100 Mpx photo are made
band by band and tile by tile from the network's coarse scores, never as one C×H×W float array
(8.4 GB for 21 classes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Floats per band when a full-size map is reduced band by band (64 MB of float32).
BAND_VALUES = 1 << 24


def source_positions(out_len: int, in_len: int, start: int, stop: int, device=None) -> torch.Tensor:
    """Where output pixels start..stop-1 of an `in_len` -> `out_len` resize sample the input: pixel
    centres mapped as `F.interpolate(..., align_corners=False)` maps them."""
    return (torch.arange(start, stop, device=device, dtype=torch.float64) + 0.5) * (in_len / out_len) - 0.5


def sample(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`scores` (…×h×w) bilinearly sampled at source positions `rows` × `cols` (clamped at the
    borders, as PyTorch's bilinear interpolation clamps them) -> …×len(rows)×len(cols)."""
    def taps(pos: torch.Tensor, n: int):
        pos = pos.clamp(0, n - 1)
        lo = pos.floor().long()
        return lo, (lo + 1).clamp_max(n - 1), (pos - lo).to(scores.dtype)

    y0, y1, wy = taps(rows, scores.shape[-2])
    x0, x1, wx = taps(cols, scores.shape[-1])
    vertical = torch.lerp(scores[..., y0, :], scores[..., y1, :], wy[:, None])
    return torch.lerp(vertical[..., x0], vertical[..., x1], wx)


def resample(scores: torch.Tensor, size: tuple[int, int], rows: tuple[int, int] | None = None,
             cols: tuple[int, int] | None = None) -> torch.Tensor:
    """Rows `rows` = (start, stop) and columns `cols` of `scores` (…×h×w) bilinearly resized to
    `size`, equal to that window of `F.interpolate(scores, size, mode="bilinear")`."""
    (height, width), (h, w) = size, scores.shape[-2:]
    r0, r1 = rows or (0, height)
    c0, c1 = cols or (0, width)
    return sample(scores, source_positions(height, h, r0, r1, scores.device),
                  source_positions(width, w, c0, c1, scores.device))


def row_bands(height: int, values_per_row: int) -> list[tuple[int, int]]:
    """(start, stop) row ranges of at most BAND_VALUES values each."""
    step = max(1, BAND_VALUES // max(1, values_per_row))
    return [(y, min(y + step, height)) for y in range(0, height, step)]


def resampled_bands(scores: torch.Tensor, size: tuple[int, int]):
    """Yield (start, stop, band): the bilinear resize of N×C×h×w `scores` to `size`, a band of rows at a
    time, each of at most BAND_VALUES values."""
    n, c, _, width = scores.shape
    columns = torch.arange(width, device=scores.device, dtype=torch.float64)
    for r0, r1 in row_bands(size[0], n * c * size[1]):
        # The band's rows sampled on the coarse grid, then its columns by F.interpolate (a row scale
        # of 1 leaves the rows as they are): the wide step fused in one kernel.
        rows = sample(scores, source_positions(size[0], scores.shape[-2], r0, r1, scores.device), columns)
        yield r0, r1, F.interpolate(rows, size=(r1 - r0, size[1]), mode="bilinear", align_corners=False)
