"""The fully connected CRF of Krähenbühl & Koltun with DeepLab's energy:

    E(x) = Σ -log P(x_i) + Σ_{i<j} μ(x_i, x_j) [ w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)
                                               + w2 exp(-|p_i-p_j|²/2σγ²) ]

One `dense_crf` in front of two backends with the same answer: pydensecrf (`pydensecrf_backend`,
Krähenbühl's C++) and torch (`torch_backend`: the permutohedral lattice of `lattice` and mean-field in
PyTorch ops, or in the Triton kernels of `triton_mean_field` on CUDA devices). `params` holds the
parameters, the presets and the input checks they share.
"""
from __future__ import annotations

from .params import BACKENDS, CRF_PRESETS, NORMALIZATIONS, CRFParams, check_crf_inputs
from .pydensecrf_backend import PYDENSECRF_MISSING, pydensecrf_installed, pydensecrf_model, pydensecrf_refine
from .torch_backend import LATTICE_PIXELS, MEAN_FIELDS, choose_mean_field, dense_crf_batch

__all__ = ["BACKENDS", "CRF_PRESETS", "CRFParams", "LATTICE_PIXELS", "MEAN_FIELDS", "NORMALIZATIONS",
           "PYDENSECRF_MISSING", "check_crf_inputs", "choose_mean_field", "dense_crf", "dense_crf_batch",
           "pydensecrf_installed", "pydensecrf_model"]


def dense_crf(image, probs, params: CRFParams = CRFParams(), backend: str = "pydensecrf", device=None):
    """Refine class probabilities with the fully connected CRF.

    image: H×W×3 uint8 RGB; probs: C×H×W class probabilities (rows sum to 1). Returns C×H×W float32
    (a numpy array; with backend="torch" and a tensor `probs`, a tensor on `device`, default its own;
    numpy inputs go to the GPU when there is one).
    `backend`: "pydensecrf" (Krähenbühl's C++ on one CPU core) or "torch" (the same inference in
    PyTorch ops on any device, Triton kernels on CUDA)."""
    if backend == "torch":
        import torch

        if device is None and not isinstance(probs, torch.Tensor):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        (out,) = dense_crf_batch([image], [probs], params, device=device)
        return out if isinstance(probs, torch.Tensor) else out.cpu().numpy()
    if backend != "pydensecrf":
        raise ValueError(f"dense_crf: backend {backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    return pydensecrf_refine(image, probs, params)
