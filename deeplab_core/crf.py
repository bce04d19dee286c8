"""The fully connected CRF of Krähenbühl & Koltun (pydensecrf) with DeepLab's energy:

    E(x) = Σ -log P(x_i) + Σ_{i<j} μ(x_i, x_j) [ w1 exp(-|p_i-p_j|²/2σα² - |I_i-I_j|²/2σβ²)
                                               + w2 exp(-|p_i-p_j|²/2σγ²) ]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    """Names as in the paper (w1, σα, σβ, w2, σγ) and in DeepLab's released code (bi_*, pos_*).
    Defaults: the released DeepLab-v2 ResNet-101 / VOC setting, 10 mean-field iterations."""
    bi_w: float = 4.0          # w1
    bi_xy_std: float = 67.0    # σα
    bi_rgb_std: float = 3.0    # σβ
    pos_w: float = 3.0         # w2
    pos_xy_std: float = 1.0    # σγ
    iterations: int = 10

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"CRF parameter {f.name} must be a finite number >= 0, got {value!r}")
        if self.bi_xy_std <= 0 or self.bi_rgb_std <= 0 or self.pos_xy_std <= 0:
            raise ValueError("CRF standard deviations (bi_xy_std, bi_rgb_std, pos_xy_std) must be > 0")

    def to_dict(self) -> dict:
        return asdict(self)


# The released settings found by cross-validation on VOC val (DeepLab v2 / LargeFOV).
CRF_PRESETS = {
    "resnet101_voc": CRFParams(),
    "vgg16_largefov_voc": CRFParams(bi_w=4.0, bi_xy_std=121.0, bi_rgb_std=5.0, pos_w=3.0, pos_xy_std=3.0),
}


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities with the fully connected CRF.

    image: H×W×3 uint8 RGB; probs: C×H×W class probabilities (rows sum to 1). Returns C×H×W float32.
    """
    import pydensecrf.densecrf as dcrf

    image, probs = np.asarray(image), np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"dense_crf: image must be H×W×3 uint8, got shape {image.shape} dtype {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"dense_crf: probs must be C×H×W matching the image {image.shape[:2]}, got {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating) or probs.shape[0] < 2:
        raise ValueError(f"dense_crf: probs must be floating point with >= 2 classes, got {probs.dtype} {probs.shape}")
    num_classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    # pydensecrf takes a writable C-contiguous buffer; arrays from Ray's object store are read-only.
    rgbim = image if image.flags.c_contiguous and image.flags.writeable else np.array(image, order="C")
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std, rgbim=rgbim, compat=params.bi_w)
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)
