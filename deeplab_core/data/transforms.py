"""Geometric transforms applied identically to an image and its label."""
from __future__ import annotations

from dataclasses import dataclass

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


# torchvision's ImageNet statistics: the backbones' weights expect them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PAD_RGB = tuple(round(255 * m) for m in MEAN)  # images pad with the mean (zero after normalising)


def pad_crop_pair(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, crop: int,
                  ignore_index: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Pad to at least crop×crop (image with the mean colour, label with ignore), then a random crop."""
    h, w = label.shape
    H, W = max(h, crop), max(w, crop)
    if (H, W) != (h, w):
        padded = np.empty((H, W, 3), np.uint8)
        padded[:] = PAD_RGB
        padded[:h, :w] = image
        padded_label = np.full((H, W), ignore_index, np.uint8)
        padded_label[:h, :w] = label
        image, label = padded, padded_label
    y, x = int(rng.integers(0, H - crop + 1)), int(rng.integers(0, W - crop + 1))
    return image[y:y + crop, x:x + crop], label[y:y + crop, x:x + crop]


def train_sample(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, crop: int,
                 scale_range=(0.5, 1.5), flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The DeepLab training transform: random rescale, flip, pad with 255 and random crop."""
    if scale_range != (1.0, 1.0) or flip:
        image, label, _ = random_scale_flip(rng, image, label, scale_range, flip)
    return pad_crop_pair(rng, image, label, crop)


@dataclass(frozen=True)
class InputNormalization:
    """How a model expects its input: uint8 RGB -> (x / scale - mean) / std, channels reversed first
    when `bgr` (mean and std then in BGR order)."""
    name: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False


IMAGENET = InputNormalization("imagenet", 255.0, MEAN, STD)
# The released DeepLab Caffe models: BGR, 0-255, minus the mean pixel of their prototxt.
CAFFE = InputNormalization("caffe", 1.0, (104.008, 116.669, 122.675), (1.0, 1.0, 1.0), bgr=True)
NORMALIZATIONS = {n.name: n for n in (IMAGENET, CAFFE)}


def normalize(images, normalization: InputNormalization = IMAGENET):
    """uint8 N×H×W×3 RGB (torch) -> float N×3×H×W as the model expects it (`normalization`)."""
    import torch

    x = images.permute(0, 3, 1, 2).float()
    if normalization.bgr:
        x = x.flip(1)
    mean = torch.tensor(normalization.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=images.device).view(1, 3, 1, 1)
    return (x.div_(normalization.scale) - mean) / std
