"""One image's confidence statistics, from the confidence and entropy maps of its mask
(`deeplab_core.inference.Masks`, 255 × the top probability and 255 × the normalised entropy)."""
from __future__ import annotations

import numpy as np

# The confidence histogram's bins: [0, 0.05), [0.05, 0.1), ... [0.95, 1].
CONFIDENCE_BINS = 20


def image_confidence(confidence: np.ndarray, entropy: np.ndarray, low: float = 0.5) -> dict:
    """mean_confidence and mean_entropy (0..1), low_confidence_fraction (pixels whose top probability
    is under `low`) and confidence_histogram (pixel counts in CONFIDENCE_BINS bins)."""
    if not confidence.size:
        return {"mean_confidence": 0.0, "low_confidence_fraction": 0.0, "mean_entropy": 0.0,
                "confidence_histogram": np.zeros(CONFIDENCE_BINS, np.int64)}
    bins = np.minimum(confidence.ravel().astype(np.int32) * CONFIDENCE_BINS // 255, CONFIDENCE_BINS - 1)
    return {"mean_confidence": float(confidence.mean()) / 255,
            "low_confidence_fraction": float(np.mean(confidence < low * 255)),
            "mean_entropy": float(entropy.mean()) / 255,
            "confidence_histogram": np.bincount(bins, minlength=CONFIDENCE_BINS).astype(np.int64)}
