"""A batch run's distributions, accumulated on the driver from its summary rows as they stream back
(no second pass over the images)."""
from __future__ import annotations

import heapq

import numpy as np

from .confidence import CONFIDENCE_BINS
from .drift import Distributions


class NightStatistics:
    """`add` every summary row; `distributions` at the end. Keeps the `review` least confident images'
    rows for a person to look at."""

    def __init__(self, classes: list[str], review: int = 8):
        self.classes, self.review = list(classes), review
        self.class_pixels = np.zeros(len(classes), np.int64)
        self.images_with = np.zeros(len(classes), np.int64)
        self.histogram = np.zeros(CONFIDENCE_BINS, np.int64)
        self.ok = self.errors = 0
        self.weighted = {"mean_confidence": 0.0, "low_confidence_fraction": 0.0, "mean_entropy": 0.0}
        self._least: list[tuple] = []  # max-heap by confidence (negated) of the `review` least confident

    def add(self, row: dict) -> None:
        if row["status"] != "ok":
            self.errors += 1
            return
        self.ok += 1
        counts = np.asarray(row["class_pixels"], np.int64)
        pixels = int(counts.sum())
        self.class_pixels += counts
        self.images_with += counts > 0
        self.histogram += np.asarray(row["confidence_histogram"], np.int64)
        for key in self.weighted:
            self.weighted[key] += row[key] * pixels
        entry = (-row["mean_confidence"], row["source"], row)
        if len(self._least) < self.review:
            heapq.heappush(self._least, entry)
        elif entry > self._least[0]:
            heapq.heapreplace(self._least, entry)

    def least_confident(self) -> list[dict]:
        """The kept rows, least confident first."""
        return [row for _, _, row in sorted(self._least, reverse=True)]

    def distributions(self, images_per_s: float = 0.0, settings: dict | None = None) -> Distributions:
        pixels = int(self.class_pixels.sum())
        share = self.class_pixels / pixels if pixels else np.zeros(len(self.classes))
        return Distributions(
            class_share=dict(zip(self.classes, share.tolist())),
            class_images=dict(zip(self.classes, (self.images_with / max(1, self.ok)).tolist())),
            confidence_histogram=(self.histogram / max(1, self.histogram.sum())).tolist(),
            **{k: v / pixels if pixels else 0.0 for k, v in self.weighted.items()},
            images=self.ok, errors=self.errors, pixels=pixels, images_per_s=images_per_s, settings=settings or {})
