"""The CRF's parameters (names as in the paper and in DeepLab's released code), the released
presets, and the input checks every backend shares."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

BACKENDS = ("pydensecrf", "torch")
NORMALIZATIONS = ("symmetric", "after")


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
