"""The fully connected CRF of Krähenbühl & Koltun (pydensecrf) with DeepLab's energy:

    E(x) = Σ -log P(x_i) + Σ_{i<j} μ(x_i, x_j) [ w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)
                                               + w2 exp(-|p_i-p_j|²/2σγ²) ]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


BACKENDS = ("pydensecrf", "torch")
NORMALIZATIONS = ("symmetric", "after")
PYDENSECRF_MISSING = ("pydensecrf is not installed: pip install 'deeplab-ray[pydensecrf]' (a C++ build: needs a "
                      "compiler), or use --crf-backend torch, the same CRF in PyTorch")


def pydensecrf_installed() -> bool:
    """Whether pydensecrf (the `pydensecrf` extra, built from source) can be imported here."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class CRFParams:
    """Names as in the paper (w1, σα, σβ, w2, σγ) and in DeepLab's released code (bi_*, pos_*).
    Defaults: the released DeepLab-v2 ResNet-101 / VOC setting, 10 mean-field iterations.
    `normalization`: how each kernel is normalised; `symmetric` is pydensecrf's default, `after` is
    what DeepLab's Caffe-era CRF code used (NORMALIZE_AFTER), for matching the paper's numbers."""
    bi_w: float = 4.0          # w1
    bi_xy_std: float = 67.0    # σα
    bi_rgb_std: float = 3.0    # σβ
    pos_w: float = 3.0         # w2
    pos_xy_std: float = 1.0    # σγ
    iterations: int = 10
    normalization: str = "symmetric"

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"CRF parameter normalization must be one of {', '.join(NORMALIZATIONS)}, "
                             f"got {self.normalization!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "normalization" and (not isinstance(value, (int, float)) or not np.isfinite(value)
                                              or value < 0):
                raise ValueError(f"CRF parameter {f.name} must be a finite number >= 0, got {value!r}")
        if self.bi_xy_std <= 0 or self.bi_rgb_std <= 0 or self.pos_xy_std <= 0:
            raise ValueError("CRF standard deviations (bi_xy_std, bi_rgb_std, pos_xy_std) must be > 0")

    @classmethod
    def from_strings(cls, values: dict) -> "CRFParams":
        """From text values (MLflow params, `--crf KEY=VALUE`); a bad key or value is a ValueError
        naming it."""
        types = {f.name: f.type for f in fields(cls)}
        out = {}
        for key, value in values.items():
            if key not in types:
                raise ValueError(f"unknown CRF parameter {key!r}; valid: {', '.join(types)}")
            if key == "normalization":
                out[key] = str(value)
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"CRF parameter {key}: {value!r} is not a number") from None
            if key == "iterations" and number != int(number):
                raise ValueError(f"CRF parameter iterations must be an integer, got {value!r}")
            out[key] = int(number) if key == "iterations" else number
        return cls(**out)

    def to_dict(self) -> dict:
        return asdict(self)


# The released settings found by cross-validation on VOC val (DeepLab v2 / LargeFOV).
CRF_PRESETS = {
    "resnet101_voc": CRFParams(),
    "vgg16_largefov_voc": CRFParams(bi_w=4.0, bi_xy_std=121.0, bi_rgb_std=5.0, pos_w=3.0, pos_xy_std=3.0),
}


def _dtype(array) -> str:
    return str(array.dtype).removeprefix("torch.")


def check_crf_inputs(image, probs) -> None:
    """The same one-line ValueError for both backends (numpy arrays or torch tensors)."""
    if image.ndim != 3 or image.shape[2] != 3 or _dtype(image) != "uint8":
        raise ValueError(f"dense_crf: image must be H×W×3 uint8, got shape {tuple(image.shape)} dtype "
                         f"{_dtype(image)}")
    if probs.ndim != 3 or tuple(probs.shape[1:]) != tuple(image.shape[:2]):
        raise ValueError(f"dense_crf: probs must be C×H×W matching the image {tuple(image.shape[:2])}, got "
                         f"{tuple(probs.shape)}")
    if not _dtype(probs).startswith(("float", "bfloat")) or probs.shape[0] < 2:
        raise ValueError(f"dense_crf: probs must be floating point with >= 2 classes, got {_dtype(probs)} "
                         f"{tuple(probs.shape)}")
    finite = probs.isfinite().all() if hasattr(probs, "isfinite") else np.isfinite(probs).all()
    if not finite:
        raise ValueError("dense_crf: probs hold NaN or infinite values")


def dense_crf(image, probs, params: CRFParams = CRFParams(), backend: str = "pydensecrf", device=None):
    """Refine class probabilities with the fully connected CRF.

    image: H×W×3 uint8 RGB; probs: C×H×W class probabilities (rows sum to 1). Returns C×H×W float32
    (a numpy array; with backend="torch" and a tensor `probs`, a tensor on `device`, default its own;
    numpy inputs go to the GPU when there is one).
    `backend`: "pydensecrf" (Krähenbühl's C++ on one CPU core) or "torch" (`crf_torch`, the same
    inference in PyTorch ops on any device)."""
    if backend == "torch":
        import torch

        from .crf_torch import dense_crf_batch

        if device is None and not isinstance(probs, torch.Tensor):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        (out,) = dense_crf_batch([image], [probs], params, device=device)
        return out if isinstance(probs, torch.Tensor) else out.cpu().numpy()
    if backend != "pydensecrf":
        raise ValueError(f"dense_crf: backend {backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    image, probs = np.asarray(image), np.asarray(probs)
    q = pydensecrf_model(image, probs, params).inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(probs.shape)


def pydensecrf_model(image: np.ndarray, probs: np.ndarray, params: CRFParams):
    """pydensecrf's DenseCRF2D holding our energy, ready for `inference` (or `startInference` and
    `stepInference`, to follow Q iteration by iteration)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ValueError(PYDENSECRF_MISSING) from None
    check_crf_inputs(image, probs)
    num_classes, height, width = probs.shape
    normalization = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}[params.normalization]
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w, normalization=normalization)
    # pydensecrf takes a writable C-contiguous buffer; arrays from Ray's object store are read-only.
    rgbim = image if image.flags.c_contiguous and image.flags.writeable else np.array(image, order="C")
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgbim, compat=params.bi_w,
                             normalization=normalization)
    return crf
