"""Geometric transforms applied identically to an image and its label."""
from __future__ import annotations

import numpy as np
from PIL import Image


def rescale_pair(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear for the image, nearest for the label so no new class ids appear."""
    h, w = label.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize(size, Image.NEAREST)))


def flip_pair(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])


def random_scale_flip(rng: np.random.Generator, image: np.ndarray, label: np.ndarray,
                      scale_range=(0.5, 1.5), flip: bool = True):
    """The DeepLab random-rescale augmentation; returns (image, label, variant description)."""
    scale = float(rng.uniform(*scale_range))
    flipped = bool(flip and rng.random() < 0.5)
    image, label = rescale_pair(image, label, scale)
    if flipped:
        image, label = flip_pair(image, label)
    return image, label, f"scale={scale:.3f},flip={int(flipped)}"
