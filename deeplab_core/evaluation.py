"""Everything an evaluation reports about one stream of predictions: the confusion matrix (mIoU,
per-class IoU, pixel and mean accuracy) and the trimap bands around object boundaries. Scores of
shards merge by summing."""
from __future__ import annotations

import numpy as np

from .metrics import TRIMAP_WIDTHS, ConfusionMatrix, TrimapIoU


class SegmentationScores:
    def __init__(self, num_classes: int, widths=TRIMAP_WIDTHS):
        self.confusion = ConfusionMatrix(num_classes)
        self.trimap = TrimapIoU(num_classes, widths)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> "SegmentationScores":
        self.confusion.update(prediction, target)
        self.trimap.update(prediction, target)
        return self

    def __add__(self, other: "SegmentationScores") -> "SegmentationScores":
        out = SegmentationScores(self.confusion.num_classes, self.trimap.widths)
        out.confusion, out.trimap = self.confusion + other.confusion, self.trimap + other.trimap
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays, to cross process boundaries (Ray Data rows)."""
        return {"confusion": self.confusion.matrix,
                "trimap": np.stack([self.trimap.matrices[w].matrix for w in self.trimap.widths])}

    @classmethod
    def from_arrays(cls, arrays: dict, widths=TRIMAP_WIDTHS) -> "SegmentationScores":
        out = cls(len(arrays["confusion"]), widths)
        out.confusion = ConfusionMatrix(out.confusion.num_classes, np.asarray(arrays["confusion"]))
        for w, matrix in zip(out.trimap.widths, np.asarray(arrays["trimap"])):
            out.trimap.matrices[w] = ConfusionMatrix(out.confusion.num_classes, matrix)
        return out

    def summary(self, class_names=None) -> dict:
        return {**self.confusion.summary(class_names),
                "trimap_miou": {w: (None if np.isnan(v) else v) for w, v in self.trimap.curve().items()}}
