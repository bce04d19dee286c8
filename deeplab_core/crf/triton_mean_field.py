"""The mean-field loop of `torch_backend.reference_mean_field` in three Triton kernels, for CUDA devices: the
same lattices, the same operations in the same order per value, so the same Q to float rounding.

Per iteration and lattice, the reference makes a sparse product (splat), two gathers and two adds per
blur direction, a second sparse product (slice), then scales, sums and a softmax, each through memory.
Here:
- `_splat`: each lattice vertex sums the weighted values of its own pixels, read through the splat's
  sorted pixel list (CSR rows), the kernel's normalisation applied on the way in: a gather, no
  atomics, so the sum's order is fixed and two runs give bit-identical Q;
- `_blur`: one pass per lattice direction reads each vertex and its two neighbours and writes the
  blurred vertex into the other of two tables;
- `_slice_update`: one pass per pixel slices both lattices, normalises, weighs the two Potts messages,
  adds the unary and takes the softmax: the new Q, written once.
Kernels run on CUDA tensors; under `TRITON_INTERPRET=1` (Triton's interpreter) on CPU tensors too,
which is how the tests check them against the reference without a GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Vertices per splat and blur program, pixels per slice program. Under the interpreter (CPU tensors)
# each program costs milliseconds of Python, so it takes few large ones; masks make any size exact.
BLOCKS = {"cuda": {"splat": 32, "blur": 64, "slice": 32}, "cpu": {"splat": 1024, "blur": 4096, "slice": 1024}}


@triton.jit
def _splat(crow, pixels, weights, scale, q, table, rows, C: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_C: tl.constexpr):
    """table[n] = Σ_k weights[k] · (scale[p_k] · q[p_k]) over vertex n's pixels p_k in their sorted order
    (none for row M); BLOCK_N vertices per program, their k-th pixels read together."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_C)
    valid = n < rows
    start = tl.load(crow + n, mask=valid, other=0)
    length = tl.load(crow + n + 1, mask=valid, other=0) - start
    columns = (c < C)[None, :]
    total = tl.zeros((BLOCK_N, BLOCK_C), tl.float32)
    for j in range(0, tl.max(length, 0)):
        present = j < length
        k = start + j
        p = tl.load(pixels + k, mask=present, other=0)
        w = tl.load(weights + k, mask=present, other=0.0)
        s = tl.load(scale + p, mask=present, other=0.0)
        v = tl.load(q + p[:, None] * C + c[None, :], mask=present[:, None] & columns, other=0.0)
        total += w[:, None] * (s[:, None] * v)
    tl.store(table + n[:, None] * C + c[None, :], total, mask=valid[:, None] & columns)


@triton.jit
def _blur(source, target, before, after, rows, C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """target[n] = source[n] + ½(source[n⁻] + source[n⁺]) along one lattice direction (row M: zero)."""
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_C)
    valid = n < rows
    mask = valid[:, None] & (c < C)[None, :]
    b = tl.load(before + n, mask=valid, other=0)
    a = tl.load(after + n, mask=valid, other=0)
    own = tl.load(source + n[:, None] * C + c[None, :], mask=mask, other=0.0)
    vb = tl.load(source + b[:, None] * C + c[None, :], mask=mask, other=0.0)
    va = tl.load(source + a[:, None] * C + c[None, :], mask=mask, other=0.0)
    tl.store(target + n[:, None] * C + c[None, :], own + 0.5 * (vb + va), mask=mask)


@triton.jit
def _sliced(p, valid, c, mask, vertices, weights, table, C: tl.constexpr, D1: tl.constexpr, BLOCK_P: tl.constexpr,
            BLOCK_C: tl.constexpr):
    """Σ_i weights[p, i] · table[vertices[p, i]] over the D1 = d+1 vertices of each pixel's simplex."""
    total = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for i in tl.static_range(D1):
        v = tl.load(vertices + p * D1 + i, mask=valid, other=0)
        w = tl.load(weights + p * D1 + i, mask=valid, other=0.0)
        total += w[:, None] * tl.load(table + v[:, None] * C + c[None, :], mask=mask, other=0.0)
    return total


@triton.jit
def _slice_update(unary, q, points, vertices1, weights1, table1, norm1, weight1, vertices2, weights2, table2,
                  norm2, weight2, C: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, BLOCK_P: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """q = softmax(-unary + weight1·norm1·slice1 + weight2·norm2·slice2), pixel by pixel."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    valid = p < points
    columns = (c < C)[None, :]
    mask = valid[:, None] & columns
    energy = -tl.load(unary + p[:, None] * C + c[None, :], mask=mask, other=0.0)
    n1 = tl.load(norm1 + p, mask=valid, other=0.0)
    energy = energy + weight1 * (n1[:, None] * _sliced(p, valid, c, mask, vertices1, weights1, table1, C, D1,
                                                              BLOCK_P, BLOCK_C))
    n2 = tl.load(norm2 + p, mask=valid, other=0.0)
    energy = energy + weight2 * (n2[:, None] * _sliced(p, valid, c, mask, vertices2, weights2, table2, C, D2,
                                                              BLOCK_P, BLOCK_C))
    energy = tl.where(columns, energy, float("-inf"))
    e = tl.exp(energy - tl.max(energy, 1)[:, None])
    tl.store(q + p[:, None] * C + c[None, :], e / tl.sum(e, 1)[:, None], mask=mask)


class _LatticePass:
    """One normalised kernel's lattice as the kernels read it, and its two value tables."""

    def __init__(self, weight: float, kernel, num_classes: int):
        lattice = kernel.lattice
        self.weight = float(weight)
        self.crow = lattice.splat.crow_indices()
        self.pixels = lattice.splat.col_indices()
        self.splat_weights = lattice.splat.values().float().contiguous()
        self.vertices = lattice.slice.col_indices()
        self.slice_weights = lattice.slice.values().float().contiguous()
        self.neighbours = lattice.neighbours.contiguous()
        self.dims = lattice.neighbours.shape[0]  # d+1
        self.norm = kernel.norm.reshape(-1).float().contiguous()
        # pydensecrf's symmetric normalisation scales Q on the way in and out; `after` only out
        self.scale = self.norm if kernel.normalization == "symmetric" else torch.ones_like(self.norm)
        rows = self.crow.numel() - 1
        self.tables = [self.norm.new_empty(rows, num_classes) for _ in range(2)]

    def filter(self, q: torch.Tensor, blocks: dict, block_c: int) -> torch.Tensor:
        """Splat and blur `q` (P×C); returns the table the slice reads."""
        rows, num_classes = self.tables[0].shape
        source, target = self.tables
        _splat[(triton.cdiv(rows, blocks["splat"]),)](self.crow, self.pixels, self.splat_weights, self.scale, q,
                                                     source, rows, C=num_classes, BLOCK_N=blocks["splat"],
                                                     BLOCK_C=block_c)
        for before, after in self.neighbours:
            _blur[(triton.cdiv(rows, blocks["blur"]),)](source, target, before, after, rows, C=num_classes,
                                                       BLOCK_N=blocks["blur"], BLOCK_C=block_c)
            source, target = target, source
        return source


def triton_mean_field(unary: torch.Tensor, kernels: list, iterations: int) -> torch.Tensor:
    """`torch_backend.reference_mean_field` in Triton kernels: P×C unary energies and the two normalised kernels
    (weight, NormalizedKernel) -> P×C marginals after `iterations` mean-field updates."""
    if len(kernels) != 2:
        raise ValueError(f"triton_mean_field: the CRF has two kernels (Gaussian, bilateral), got {len(kernels)}")
    unary = unary.float().contiguous()
    points, num_classes = unary.shape
    block_c = triton.next_power_of_2(num_classes)
    blocks = BLOCKS["cuda" if unary.is_cuda else "cpu"]
    passes = [_LatticePass(weight, kernel, num_classes) for weight, kernel in kernels]
    q = torch.softmax(-unary, 1).contiguous()
    first, second = passes
    for _ in range(iterations):
        table1, table2 = first.filter(q, blocks, block_c), second.filter(q, blocks, block_c)
        _slice_update[(triton.cdiv(points, blocks["slice"]),)](
            unary, q, points, first.vertices, first.slice_weights, table1, first.norm, first.weight,
            second.vertices, second.slice_weights, table2, second.norm, second.weight, C=num_classes,
            D1=first.dims, D2=second.dims, BLOCK_P=blocks["slice"], BLOCK_C=block_c)
    return q
