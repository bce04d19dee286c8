"""Segmentation metrics from confusion matrices, which merge by summing (so workers can all-reduce).

Rule for classes absent from both ground truth and prediction: their IoU is undefined (NaN) and
they are left out of the mean, as in the VOC and Cityscapes evaluation code.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from .data.labels import IGNORE_INDEX

TRIMAP_WIDTHS = tuple(range(1, 41))


class ConfusionMatrix:
    """C×(C+1) counts, rows = ground truth, columns = prediction; the last column counts predictions
    outside 0..C-1 (an ignored Cityscapes labelId, 255): a miss of the ground-truth class, as the
    official Cityscapes evaluation counts it (a false negative, never a false positive of any
    class). Pixels whose ground truth is `ignore_index` (or any value >= C) are not counted."""

    def __init__(self, num_classes: int, matrix: np.ndarray | None = None):
        self.num_classes = num_classes
        shape = (num_classes, num_classes + 1)
        if matrix is None:
            matrix = np.zeros(shape, np.int64)
        elif np.shape(matrix) != shape:
            raise ValueError(f"a confusion matrix of {num_classes} classes is {shape[0]}x{shape[1]}, "
                             f"got {np.shape(matrix)}")
        self.matrix = np.asarray(matrix).astype(np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> "ConfusionMatrix":
        prediction, target = np.asarray(prediction), np.asarray(target)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {target.shape} differ in size")
        valid = target < self.num_classes
        if mask is not None:
            valid &= mask
        predicted = prediction[valid].astype(np.int64)
        predicted[(predicted < 0) | (predicted >= self.num_classes)] = self.num_classes
        index = target[valid].astype(np.int64) * (self.num_classes + 1) + predicted
        self.matrix += np.bincount(index, minlength=self.num_classes * (self.num_classes + 1)).reshape(
            self.num_classes, -1)
        return self

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        return ConfusionMatrix(self.num_classes, self.matrix + other.matrix)

    def iou(self) -> np.ndarray:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix[:, :-1].sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")

    def mean_accuracy(self) -> float:
        gt = self.matrix.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(gt > 0, np.diag(self.matrix) / gt, np.nan)
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def summary(self, class_names=None) -> dict:
        names = class_names or [str(i) for i in range(self.num_classes)]
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy(), "mean_accuracy": self.mean_accuracy(),
                "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, self.iou())}}


def boundary_distance(target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Distance of every pixel to the nearest ground-truth object boundary: a pixel whose 4-neighbour
    has another label, or a void pixel (VOC's void band is drawn on the boundaries)."""
    edge = target == ignore_index
    edge[:-1, :] |= target[:-1, :] != target[1:, :]
    edge[1:, :] |= target[1:, :] != target[:-1, :]
    edge[:, :-1] |= target[:, :-1] != target[:, 1:]
    edge[:, 1:] |= target[:, 1:] != target[:, :-1]
    if not edge.any():
        return np.full(target.shape, np.inf)
    return distance_transform_edt(~edge)


class TrimapIoU:
    """mIoU restricted to bands of width w around ground-truth boundaries (DeepLab Fig. 10)."""

    def __init__(self, num_classes: int, widths=TRIMAP_WIDTHS):
        self.widths = tuple(widths)
        self.matrices = {w: ConfusionMatrix(num_classes) for w in self.widths}

    def update(self, prediction: np.ndarray, target: np.ndarray) -> "TrimapIoU":
        distance = boundary_distance(target)
        for w in self.widths:
            self.matrices[w].update(prediction, target, distance <= w)
        return self

    def __add__(self, other: "TrimapIoU") -> "TrimapIoU":
        out = TrimapIoU(next(iter(self.matrices.values())).num_classes, self.widths)
        out.matrices = {w: self.matrices[w] + other.matrices[w] for w in self.widths}
        return out

    def curve(self) -> dict[int, float]:
        return {w: m.miou() for w, m in self.matrices.items()}
