"""The permutohedral lattice (Adams et al. 2010) of pydensecrf (Krähenbühl & Koltun 2011) in plain
PyTorch ops, on any device, batched: built once per call, filtered by the mean-field iterations of
`torch_backend` (the reference) and `triton_mean_field` (the fast path on CUDA).

Each choice below is pydensecrf's (file and function of its C++ source, `densecrf/src/`):

- Features (`densecrf.cpp`, `DenseCRF2D::addPairwiseGaussian/Bilateral`): x = column / σ,
  y = row / σ for the Gaussian kernel; (x/σα, y/σα, r/σβ, g/σβ, b/σβ) for the bilateral one; float32.
- Lattice (`permutohedral.cpp`, `Permutohedral::init`): elevate each d-dimensional feature onto the
  hyperplane of R^(d+1) with the scale factors sqrt(2/3)(d+1)/sqrt((i+1)(i+2)), round each coordinate
  to the nearest multiple of d+1 (half to even, as the SSE build's `_mm_cvtps_epi32`), rank the
  remainders (on a tie the later coordinate ranks higher), wrap ranks and remainders back onto the
  plane, and take the barycentric weights of the d+1 vertices of the enclosing simplex. A vertex is
  keyed by its first d coordinates; as they are all ≡ r (mod d+1) for its remainder r, a key packs
  exactly as (image, (key_i - r)/(d+1) ..., r) in mixed radix, with a margin of 2 on every digit, so
  neighbour keys (each digit moves by at most 1) can be computed by adding a constant to the packed
  code and never alias another image or vertex. Distinct keys come from `torch.unique` (no hash, no
  collision); a neighbour is found by `searchsorted` and an equality check.
- Blur (`Permutohedral::seqCompute` / `sseCompute`): along the d+1 lattice directions in the order
  0..d (forward only: the filter is not symmetric), v'(n) = v(n) + ½(v(n⁻) + v(n⁺)) with
  n⁻ = n - 1 + (d+1)e_j, n⁺ = n + 1 - (d+1)e_j; a missing neighbour contributes 0. The spatial kernel
  goes through the lattice too (for σγ = 1 it differs a lot from an exact Gaussian).
- Slice: the barycentric interpolation times α = 1/(1 + 2^-d).

Batching: the pixels of several images form one lattice (the image index is a digit of every key).
Splat and slice are sparse CSR products and the blur gathers rows: deterministic on every device.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch


@dataclass
class Lattice:
    """A permutohedral lattice over P points with M vertices; row M of the value table stays zero."""
    splat: torch.Tensor       # (M+1)×P sparse CSR: the barycentric weights (row M empty)
    slice: torch.Tensor       # P×(M+1) sparse CSR: the same weights times α
    neighbours: torch.Tensor  # (d+1)×2×(M+1): the two neighbours along each direction (M: none)
    buffers: dict = field(default_factory=dict)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """P×C -> P×C: splat, blur along each direction in order, slice. The blur reuses two
        scratch tables per value width: mean-field filters the same widths every iteration."""
        table = self.splat @ values
        key = (table.shape, table.dtype)
        if key not in self.buffers:
            self.buffers[key] = (torch.empty_like(table), torch.empty_like(table))
        before_values, after_values = self.buffers[key]
        for before, after in self.neighbours:
            torch.index_select(table, 0, before, out=before_values)
            torch.index_select(table, 0, after, out=after_values)
            table.add_(before_values.add_(after_values), alpha=0.5)  # the gathers are copies: in place is safe
        return self.slice @ table


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """P×d -> P×(d+1) coordinates on the lattice hyperplane, in pydensecrf's float32 order."""
    d = features.shape[1]
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    elevated = features.new_empty(features.shape[0], d + 1)
    running = torch.zeros_like(features[:, 0])
    for j in range(d, 0, -1):
        cf = features[:, j - 1] * float(torch.tensor(inv_std_dev / math.sqrt((j + 1) * j), dtype=torch.float32))
        elevated[:, j] = running - j * cf
        running = running + cf
    elevated[:, 0] = running
    return elevated


def build_lattice(features: torch.Tensor, image_index: torch.Tensor, images: int) -> Lattice:
    """The lattice of P points (P×d float32 features; `image_index`: P image numbers < `images`)."""
    points, d = features.shape
    device = features.device
    elevated = _elevate(features)
    down = float(torch.tensor(1.0 / (d + 1), dtype=torch.float32))
    quotient = torch.round(elevated * down).to(torch.int64)          # rem0 = (d+1)·quotient
    residual = elevated - quotient.to(elevated.dtype) * (d + 1)
    # rank_i = #{j > i: r_j > r_i} + #{j < i: r_j >= r_i}  (pydensecrf's pairwise loop, ties included)
    later = torch.triu(torch.ones(d + 1, d + 1, dtype=torch.bool, device=device), 1)
    greater = residual[:, None, :] > residual[:, :, None]             # [p, i, j]: r_j > r_i
    greater_equal = residual[:, None, :] >= residual[:, :, None]
    rank = torch.where(later, greater, greater_equal & later.T).sum(2)
    rank = rank + quotient.sum(1, keepdim=True)                       # back onto the plane
    low, high = rank < 0, rank > d
    rank = rank + (d + 1) * low - (d + 1) * high
    quotient = quotient + low.to(torch.int64) - high.to(torch.int64)
    residual = (elevated - quotient.to(elevated.dtype) * (d + 1)) * down
    # Each slot gets at most one added and one subtracted term (rank is a permutation), so this
    # scatter-add is exact in any order, on any device.
    bary = elevated.new_zeros(points, d + 2)
    bary.scatter_add_(1, d - rank, residual)
    bary.scatter_add_(1, d - rank + 1, -residual)
    bary[:, 0] += 1 + bary[:, d + 1]
    weights = bary[:, :d + 1].contiguous()

    # Vertex r of a point: key_i = (d+1)(quotient_i - [rank_i > d - r]) + r, i < d. Pack (image, the
    # d digits, r) in mixed radix with a margin of 2 per digit for the neighbours' ±1.
    digits = quotient[:, :d]
    lowest = digits.min(0).values - 2
    radix = (digits.max(0).values - lowest + 2).tolist()
    place = [0] * d
    value = d + 1
    for i in range(d - 1, -1, -1):
        place[i] = value
        value *= radix[i]
    if value * images >= 2 ** 62:
        raise ValueError("dense_crf: the CRF features span too wide a lattice (a standard deviation too small "
                         "for the image size); use larger σ or fewer images per call")
    place_t = torch.tensor(place, dtype=torch.int64, device=device)
    base = image_index.to(torch.int64) * value + ((digits - lowest) * place_t).sum(1)
    r = torch.arange(d + 1, device=device)
    step = (rank[:, :d, None] > (d - r)[None, None, :]).to(torch.int64)   # [p, i, r]
    codes = base[:, None] + r[None, :] - (step * place_t[None, :, None]).sum(1)
    vertices, offsets = torch.unique(codes, sorted=True, return_inverse=True)
    size = vertices.numel()

    remainder = vertices % (d + 1)
    total = sum(place)
    neighbours = []
    for j in range(d + 1):
        others = total - (place[j] if j < d else 0)
        own = place[j] if j < d else 0
        before = torch.where(remainder > 0, vertices - 1 + own, vertices + d - others)
        after = torch.where(remainder < d, vertices + 1 - own, vertices - d + others)
        pair = []
        for key in (before, after):
            index = torch.searchsorted(vertices, key).clamp_(max=size - 1)
            found = vertices[index] == key
            pair.append(torch.cat([torch.where(found, index, size), torch.tensor([size], device=device)]))
        neighbours.append(torch.stack(pair))

    # CSR products are deterministic on every device (a scatter-add on CUDA is not).
    entries = offsets.view(-1)
    order = torch.argsort(entries, stable=True)
    crow = torch.zeros(size + 2, dtype=torch.int64, device=device)
    crow[1:-1] = torch.cumsum(torch.bincount(entries, minlength=size), 0)
    crow[-1] = entries.numel()
    alpha = 1.0 / (1.0 + 2.0 ** -d)
    with warnings.catch_warnings():  # "CSR support is in beta": these two products are all we use of it
        warnings.simplefilter("ignore", UserWarning)
        splat = torch.sparse_csr_tensor(crow, order // (d + 1), weights.view(-1)[order], size=(size + 1, points),
                                        check_invariants=False)
        slice_ = torch.sparse_csr_tensor(torch.arange(0, entries.numel() + 1, d + 1, device=device), entries,
                                         weights.view(-1) * alpha, size=(points, size + 1), check_invariants=False)
    return Lattice(splat, slice_, torch.stack(neighbours))


def pixel_features(image: torch.Tensor, xy_std: float, rgb_std: float | None = None) -> torch.Tensor:
    """H×W×3 uint8 -> (H·W)×d float32 in row-major pixel order: (x/σ, y/σ) with x the column, and
    (r, g, b)/σ_rgb for the bilateral kernel."""
    height, width = image.shape[:2]
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=image.device),
                          torch.arange(width, dtype=torch.float32, device=image.device), indexing="ij")
    columns = [x.reshape(-1) / xy_std, y.reshape(-1) / xy_std]
    if rgb_std is not None:
        columns += [image[..., c].reshape(-1).float() / rgb_std for c in range(3)]
    return torch.stack(columns, 1)
