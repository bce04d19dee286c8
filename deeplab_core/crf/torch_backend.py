"""The fully connected CRF in PyTorch, on any device, batched: pydensecrf's mean-field inference
(Krähenbühl & Koltun 2011) over the permutohedral lattices of `lattice.py`, so that
`dense_crf(..., backend="torch")` is a drop-in for `backend="pydensecrf"`. Each choice is
pydensecrf's (file and function of its C++ source, `densecrf/src/`):

- Normalisation (`pairwise.cpp`, `DenseKernel::initLattice/filter`): n = K·1 (the lattice filter of
  ones); `symmetric`, pydensecrf's default NORMALIZE_SYMMETRIC: K̃Q = n^-½ ⊙ K(n^-½ ⊙ Q);
  `after` (NORMALIZE_AFTER, as DeepLab's 2011-era CRF code): K̃Q = n^-1 ⊙ KQ; 1e-20 is added to n.
- Potts compatibility (`labelcompatibility.cpp`, `PottsCompatibility::apply`): the message of a
  kernel of weight w is -w K̃Q, the pixel itself included (pydensecrf does not remove it).
- Inference (`densecrf.cpp`, `startInference` / `stepInference`): Q₀ = softmax(-U); each iteration
  Q = softmax(-U + Σ_k w_k K̃_k Q), the kernels in the order `dense_crf` adds them (Gaussian, then
  bilateral). The unary U = -log(clip(p, 1e-8, 1)), as `pydensecrf_backend` sets it.

Two implementations of the mean-field loop give the same Q (to float rounding): `reference_mean_field`,
in PyTorch ops, the reference and the CPU path; `triton_mean_field`, fused Triton kernels, taken by
itself on CUDA devices.

Batching: the lattices of a call hold the pixels of several images and are reused by all iterations;
calls are split so that one holds at most `max_pixels` pixels, which bounds memory (a 2048×1024
Cityscapes frame with 19 labels peaks at a few GB).
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from .lattice import Lattice, build_lattice, pixel_features
from .params import check_crf_inputs

LATTICE_PIXELS = 1 << 22  # pixels per lattice (two Cityscapes frames): bounds memory
MEAN_FIELDS = ("auto", "reference", "triton")


class NormalizedKernel:
    """One Gaussian kernel of the CRF through its lattice, normalised as pydensecrf does."""

    def __init__(self, lattice: Lattice, normalization: str):
        self.lattice, self.normalization = lattice, normalization
        norm = lattice.filter(torch.ones(lattice.slice.shape[0], 1, device=lattice.slice.device)) + 1e-20
        self.norm = norm.rsqrt() if normalization == "symmetric" else norm.reciprocal()

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.normalization == "symmetric":
            return self.norm * self.lattice.filter(self.norm * q)
        return self.norm * self.lattice.filter(q)


def reference_mean_field(unary: torch.Tensor, kernels: list[tuple[float, NormalizedKernel]],
                         iterations: int) -> torch.Tensor:
    """P×C unary energies -> P×C marginals after `iterations` mean-field updates (Potts messages)."""
    q = torch.softmax(-unary, 1)
    for _ in range(iterations):
        energy = -unary
        for weight, kernel in kernels:
            energy = energy + weight * kernel(q)
        q = torch.softmax(energy, 1)
    return q


def choose_mean_field(device: torch.device, mean_field: str = "auto") -> str:
    """Which mean-field loop runs on `device`: `auto` takes the Triton kernels on a CUDA device where
    Triton is installed, else the reference; `triton` elsewhere than CUDA only under Triton's
    interpreter (TRITON_INTERPRET=1)."""
    if mean_field not in MEAN_FIELDS:
        raise ValueError(f"dense_crf: mean_field {mean_field!r} is not valid; valid: {', '.join(MEAN_FIELDS)}")
    triton_installed = importlib.util.find_spec("triton") is not None
    if mean_field == "auto":
        return "triton" if device.type == "cuda" and triton_installed else "reference"
    if mean_field == "triton" and not triton_installed:
        raise ValueError("dense_crf: mean_field 'triton' needs Triton (pip install triton)")
    if mean_field == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"dense_crf: the Triton mean-field runs on CUDA devices (or under TRITON_INTERPRET=1), "
                         f"not on {device}; use mean_field='reference'")
    return mean_field


def _refine(images: list[torch.Tensor], probs: list[torch.Tensor], params, mean_field: str) -> list[torch.Tensor]:
    """One lattice per kernel over all these images' pixels, then mean-field on all at once."""
    sizes = [im.shape[0] * im.shape[1] for im in images]
    device = images[0].device
    image_index = torch.repeat_interleave(torch.arange(len(images), device=device),
                                          torch.tensor(sizes, device=device))
    kernels = []
    for weight, xy_std, rgb_std in ((params.pos_w, params.pos_xy_std, None),
                                    (params.bi_w, params.bi_xy_std, params.bi_rgb_std)):
        features = torch.cat([pixel_features(im, xy_std, rgb_std) for im in images])
        kernels.append((weight, NormalizedKernel(build_lattice(features, image_index, len(images)),
                                                 params.normalization)))
    num_classes = probs[0].shape[0]
    unary = torch.cat([-p.reshape(num_classes, -1).T.float().clamp(1e-8, 1.0).log() for p in probs])
    if mean_field == "triton":
        from .triton_mean_field import triton_mean_field

        q = triton_mean_field(unary, kernels, int(params.iterations))
    else:
        q = reference_mean_field(unary, kernels, int(params.iterations))
    return [part.T.reshape(p.shape) for part, p in zip(q.split(sizes), probs)]


def _tensor(array, device: torch.device) -> torch.Tensor:
    # numpy views may be reversed or read-only (Ray's object store): torch takes a contiguous copy
    return (array if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array, order="C"))).to(device)


def dense_crf_batch(images, probs, params, device=None, max_pixels: int = LATTICE_PIXELS, mean_field: str = "auto"):
    """Refine several images at once on `device` (default: where `probs` are).

    images: N×H×W×3 uint8 or a list of H×W×3 uint8 (tensors or arrays, sizes may differ);
    probs: N×C×H×W or a list of C×H×W probabilities. Returns float32 marginals in the same form
    (a tensor, or a list of tensors), on `device`. Images are refined in groups of at most
    `max_pixels` pixels (one lattice per group). `mean_field`: see `choose_mean_field`."""
    batched = not isinstance(images, (list, tuple))
    images, probs = list(images), list(probs)
    if len(images) != len(probs):
        raise ValueError(f"dense_crf: {len(images)} images but {len(probs)} probability maps")
    if not images:
        return [] if not batched else torch.empty(0)
    device = torch.device(device) if device is not None else (
        probs[0].device if isinstance(probs[0], torch.Tensor) else torch.device("cpu"))
    mean_field = choose_mean_field(device, mean_field)
    images = [_tensor(im, device) for im in images]
    probs = [_tensor(p, device) for p in probs]
    for im, p in zip(images, probs):
        check_crf_inputs(im, p)
    if len({p.shape[0] for p in probs}) > 1:
        raise ValueError(f"dense_crf: all probability maps need the same number of classes, got "
                         f"{sorted({p.shape[0] for p in probs})}")
    out, group, pixels = [], [], 0
    for im, p in zip(images, probs):
        if group and pixels + im.shape[0] * im.shape[1] > max_pixels:
            out += _refine(*map(list, zip(*group)), params, mean_field)
            group, pixels = [], 0
        group.append((im, p))
        pixels += im.shape[0] * im.shape[1]
    out += _refine(*map(list, zip(*group)), params, mean_field)
    return torch.stack(out) if batched else out
