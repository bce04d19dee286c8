"""pydensecrf (Krähenbühl's C++, one CPU core per image; the `pydensecrf` extra, built from
source) holding DeepLab's energy."""
from __future__ import annotations

import numpy as np

from .params import CRFParams, check_crf_inputs

PYDENSECRF_MISSING = ("pydensecrf is not installed: pip install 'deeplab-ray[pydensecrf]' (a C++ build: needs a "
                      "compiler), or use --crf-backend torch, the same CRF in PyTorch")


def pydensecrf_installed() -> bool:
    """Whether pydensecrf (the `pydensecrf` extra, built from source) can be imported here."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


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


def pydensecrf_refine(image, probs, params: CRFParams) -> np.ndarray:
    """C×H×W float32 marginals after `params.iterations` mean-field iterations in pydensecrf."""
    image, probs = np.asarray(image), np.asarray(probs)
    q = pydensecrf_model(image, probs, params).inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(probs.shape)
